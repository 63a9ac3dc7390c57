"""Models a site adds with ``cad-node models add``: MONAI bundles and nnU-Net v2 folders, run as
their authors wrote them (their own transforms, inferer and post-processing), in a warm child
process per model, with every file's sha256 checked before it is loaded (docs/models.md)."""

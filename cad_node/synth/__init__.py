"""Synthetic DICOM generators (chest CT phantom) for demos, tests and training."""

"""cad-node: a DICOM node for computer-aided diagnosis beside a PACS.

Not for clinical use: the shipped models are trained on synthetic data only.
"""

__version__ = "0.1.0"

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

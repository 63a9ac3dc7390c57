"""Routing: typed rules on DICOM attributes, matched without eval."""

"""Lung nodule detection on chest CT (lung_nodule_ct)."""

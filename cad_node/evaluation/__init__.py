"""Model evaluation on synthetic data: FROC, CPM, reports."""

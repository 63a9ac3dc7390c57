"""Mammography family: per-breast suspicion and lesion marks from the four screening views."""

"""Metrics (image / pixel / AUPRO), calibration, the OK/NG decision, baselines, reasoning scores and reports."""

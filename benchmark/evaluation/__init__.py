"""Evaluation: decision thresholds chosen on validation, fairness metrics with bootstrap
confidence intervals, and scoring one test split into its metrics.json `eval` entry, including
the same predictions scored per tone source (tone_sources.py) and along ITA (continuous.py).

Imports data/ and the bottom layer (errors, seeds) only; it never trains and never writes files.
"""

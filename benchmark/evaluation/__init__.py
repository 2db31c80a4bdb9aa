"""Evaluation: decision thresholds chosen on validation, fairness metrics with bootstrap
confidence intervals, and scoring one test split into its metrics.json `eval` entry.

Imports data/ and the bottom layer (errors, seeds) only; it never trains and never writes files.
"""

"""Evaluation: metrics, comparison, significance, reports and plots, cold start, the champion."""

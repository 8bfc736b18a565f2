"""Scores into ranked, explained lists: one path for evaluation, the refresh and the service."""

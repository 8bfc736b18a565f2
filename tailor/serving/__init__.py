"""Serving: the nightly batch of lists, the recommendation store and the live service."""

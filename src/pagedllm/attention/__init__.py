"""Paged attention: the contract (metadata) and its backends."""

"""Attention backends; each implements `AttentionBackend` over the same metadata."""

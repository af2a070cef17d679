"""Compiled kernels for the hot per-layer operations."""

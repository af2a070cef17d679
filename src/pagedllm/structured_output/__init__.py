"""Constrained decoding with xgrammar: grammar compilation (cached, off the step's path), the
JSON-schema keywords it enforces, and the per-request matchers whose token bitmasks the sampler
applies."""

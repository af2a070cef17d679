"""Benchmarks reachable from the CLI (`pagedllm bench ...`)."""

"""Model architectures; `pagedllm.model.registry` maps architecture names to these classes."""

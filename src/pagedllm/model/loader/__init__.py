"""Reading checkpoints: resolving model strings, fetching, GGUF and safetensors readers, caches."""

"""Models: resolution of a model string, configs, layers, architectures and weight loading.

resolved = resolve_model("smollm2-135m-instruct")      # local path | alias | hub id
config = ModelConfig.from_resolved(resolved)
model = load_model(config, device, dtype)              # hidden = model(ids, positions, md)
"""

from pagedllm.model.loader.resolve import ModelNotFoundError, ResolvedModel, resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.model.registry import UnsupportedArchitectureError, get_model_class, supported_architectures

__all__ = [
    "ModelConfig",
    "ModelNotFoundError",
    "ResolvedModel",
    "UnsupportedArchitectureError",
    "get_model_class",
    "load_model",
    "resolve_model",
    "supported_architectures",
]

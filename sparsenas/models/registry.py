"""The model registry: ``create_model(name, **kw)`` / ``list_models()``; register a constructor
with ``@MODELS.register("name")``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from sparsenas.models.networks import CNN, MLP
from sparsenas.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp", MLP)
MODELS.register("cnn", CNN)


def create_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name`` built with ``kwargs`` (e.g. input_shape, num_classes)."""
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    return MODELS.names()

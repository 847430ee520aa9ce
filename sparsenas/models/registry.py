"""``create_model(name, **kw)`` / ``list_models()``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from sparsenas.models.networks import CNN, MLP

_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model constructor under ``name`` (names are unique)."""

    def decorate(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"register_model(): a model named {name!r} is already registered")
        _MODELS[name] = constructor
        return constructor

    return decorate


def create_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name`` built with ``kwargs`` (e.g. input_shape, num_classes)."""
    try:
        constructor = _MODELS[name]
    except KeyError:
        raise ValueError(f"create_model(): unknown model {name!r}; "
                         f"known: {list_models()}") from None
    return constructor(**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)

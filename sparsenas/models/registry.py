"""The model registry: ``create_model(name, **kw)`` / ``list_models()``; register a constructor
with ``@MODELS.register("name")``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sparsenas.config import ConfigPiece, option
from sparsenas.data import Dataset
from sparsenas.models.archs import build_arch
from sparsenas.models.darts import DartsNetwork, DartsSearchNetwork
from sparsenas.models.networks import CNN, MLP, NodeMaskedNet
from sparsenas.registry import Registry
from sparsenas.seeds import derive_seed

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp", MLP)
MODELS.register("cnn", CNN)
MODELS.register("darts-search", DartsSearchNetwork)
MODELS.register("darts", DartsNetwork)
MODELS.register("arch", build_arch)


def create_model(name: str, **kwargs) -> nn.Module:
    """The model registered as ``name`` built with ``kwargs`` (e.g. input_shape, num_classes)."""
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    return MODELS.names()


def _has_node_space(constructor: Callable[..., nn.Module]) -> bool:
    return isinstance(constructor, type) and issubclass(constructor, NodeMaskedNet)


@dataclass(frozen=True)
class ParentConfig(ConfigPiece):
    """The over-parameterised parent of a node-mask search (a config piece)."""

    model: str = option("mlp", "parent network (a registered node-masked model: mlp or cnn)")
    widths: tuple[int, ...] = option((128, 128), "hidden units (mlp) or channels (cnn) per "
                                                 "masked layer, e.g. 128,128")

    def validate(self) -> None:
        if not _has_node_space(MODELS.get(self.model)):
            node_models = [name for name in MODELS.names() if _has_node_space(MODELS.get(name))]
            raise ValueError(f"model {self.model!r} has no node space; node-mask searches take "
                             f"{', '.join(node_models)}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive, got {self.widths}")

    def build(self, data: Dataset, seed: int) -> NodeMaskedNet:
        """The parent for ``data`` with the shared initialisation θ0 of ``seed`` (drawn on the
        CPU, so θ0 is the same on every device)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("init", seed))
            model = create_model(self.model, input_shape=data.input_shape,
                                 num_classes=data.num_classes, widths=tuple(self.widths))
        if not isinstance(model, NodeMaskedNet):
            raise ValueError(f"model {self.model!r} has no node space")
        return model

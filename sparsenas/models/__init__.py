"""Parent networks with node masks, their K-candidate batched form, and a model registry."""

from sparsenas.models.batched import CandidateBatch, weight_masks
from sparsenas.models.networks import CNN, MLP, NodeMaskedNet
from sparsenas.models.registry import create_model, list_models, register_model

__all__ = [
    "CNN",
    "CandidateBatch",
    "MLP",
    "NodeMaskedNet",
    "create_model",
    "list_models",
    "register_model",
    "weight_masks",
]

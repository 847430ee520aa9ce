"""Parent networks with node masks, their K-candidate batched form, and a model registry."""

from sparsenas.models.batched import CandidateBatch, weight_masks
from sparsenas.models.lm import GPT
from sparsenas.models.networks import CNN, MLP, NodeMaskedNet
from sparsenas.models.registry import MODELS, create_model, list_models

__all__ = [
    "CNN",
    "MODELS",
    "CandidateBatch",
    "GPT",
    "MLP",
    "NodeMaskedNet",
    "create_model",
    "list_models",
    "weight_masks",
]

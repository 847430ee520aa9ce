"""Parent networks with node masks, the architecture-space networks, their K-candidate batched
form, a small ViT, DARTS networks on sparse layers, an elastic supernet, a small GPT, and a model
registry."""

from sparsenas.models.archs import (
    Arch,
    arch_candidate_batch,
    build_arch,
    decode_arch,
    encode_arch,
    group_by_shape,
)
from sparsenas.models.batched import CandidateBatch, weight_masks
from sparsenas.models.darts import DartsNetwork, DartsSearchNetwork, Genotype
from sparsenas.models.elastic import ChildConfig, ElasticChild, ElasticNet
from sparsenas.models.lm import GPT
from sparsenas.models.networks import CNN, MLP, NodeMaskedNet
from sparsenas.models.registry import MODELS, ParentConfig, create_model, list_models
from sparsenas.models.vit import ViT, ViTWidths, flops, num_parameters

__all__ = [
    "Arch",
    "arch_candidate_batch",
    "build_arch",
    "decode_arch",
    "encode_arch",
    "group_by_shape",
    "CNN",
    "MODELS",
    "CandidateBatch",
    "ChildConfig",
    "DartsNetwork",
    "DartsSearchNetwork",
    "ElasticChild",
    "ElasticNet",
    "GPT",
    "Genotype",
    "MLP",
    "NodeMaskedNet",
    "ParentConfig",
    "ViT",
    "ViTWidths",
    "create_model",
    "flops",
    "list_models",
    "num_parameters",
    "weight_masks",
]

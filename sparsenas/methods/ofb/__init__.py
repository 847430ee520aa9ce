"""OFB (Once for Both): single-stage importance and width search for vision-transformer
compression — bi-mask width units, adaptive one-hot and FLOPs losses, progressive elimination
with physical shrinking, progressive masked image modelling, and export to a plain ViT."""

from sparsenas.methods.ofb.supernet import OFBSupernet, to_plain_vit
from sparsenas.methods.ofb.uniform import uniform_widths
from sparsenas.methods.ofb.units import WidthUnit, importance_ranks, kept_sizes, validate_ratios

__all__ = ["OFBSupernet", "WidthUnit", "importance_ranks", "kept_sizes", "to_plain_vit",
           "uniform_widths", "validate_ratios"]

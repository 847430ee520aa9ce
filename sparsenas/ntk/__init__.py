"""Empirical NTK, NTK metrics and Label-Gradient Alignment."""

from sparsenas.ntk.empirical import MODES, empirical_ntk
from sparsenas.ntk.kernels import ntk_gram_block_, ntk_masked_block_

__all__ = ["MODES", "empirical_ntk", "ntk_gram_block_", "ntk_masked_block_"]

"""A residual block that keeps a network's body a flat list of layers: ``Residual(*layers)``
computes x + layers(x), so a model stays one ``nn.Sequential`` of plain layers and residual
blocks, the layout :class:`sparsenas.models.CandidateBatch` converts layer by layer."""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Sequential):
    """x + f(x) with f the Sequential of ``layers``; f must keep the shape of x."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        if out.shape != x.shape:
            raise ValueError(f"Residual: the block maps {tuple(x.shape)} to {tuple(out.shape)}; "
                             f"a residual add needs the shape kept")
        return x + out

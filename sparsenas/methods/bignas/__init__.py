"""BigNAS: after-training steps specific to it (child evaluation with BN calibration, latency of
exported children, coarse-to-fine selection under a budget)."""

from sparsenas.methods.bignas.selection import (Selection, calibrated_accuracy, coarse_to_fine,
                                                 exported_latency_ms)

__all__ = ["Selection", "calibrated_accuracy", "coarse_to_fine", "exported_latency_ms"]

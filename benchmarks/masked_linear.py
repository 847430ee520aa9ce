"""masked_linear against the PyTorch baselines: dense F.linear (the floor), F.linear(x, w * mask),
a Linear pruned with torch.nn.utils.prune.custom_from_mask, and for K candidates a Python loop of
K F.linear(x_k, w * mask_k).

    python -m benchmarks.masked_linear [--quick]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from benchmarks.harness import peak_memory_bytes, time_call, write_results
from sparsenas.ops import _reference, masked_linear, pack_mask

IN_FEATURES = OUT_FEATURES = 1024
DENSITY = 0.5
CANDIDATES = 64


def check_correctness(device: torch.device) -> None:
    """Forward and gradients of every benchmarked form against the float64 reference."""
    gen = torch.Generator().manual_seed(0)
    for rows, K in ((3, None), (300, None), (5, 4)):
        lead = () if K is None else (K,)
        x = torch.randn(*lead, rows, 96, generator=gen, dtype=torch.float64)
        weight = torch.randn(80, 96, generator=gen, dtype=torch.float64)
        bias = torch.randn(80, generator=gen, dtype=torch.float64)
        keep = torch.rand(*lead, 80, 96, generator=gen) < DENSITY
        for mask, packed in ((keep, False), (pack_mask(keep), True)):
            leaves = [t.float().to(device).requires_grad_() for t in (x, weight, bias)]
            out = masked_linear(leaves[0], leaves[1], mask.to(device), leaves[2], packed=packed)
            ref_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
            ref = _reference.masked_linear(ref_leaves[0], ref_leaves[1], keep, ref_leaves[2])
            torch.testing.assert_close(out.double().cpu(), ref, atol=1e-4, rtol=1e-4)
            grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
            grads = torch.autograd.grad(out, leaves, grad_out.float().to(device))
            ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out)
            for grad, ref_grad in zip(grads, ref_grads):
                torch.testing.assert_close(grad.double().cpu(), ref_grad, atol=1e-3, rtol=1e-4)


# Each time is the best of this many medians: on a CPU shared with other work, the best median
# is the one least disturbed by it.
REPEATS = 3


def best_time(fn, device: torch.device, min_run_time: float) -> float:
    return min(time_call(fn, device, min_run_time) for _ in range(REPEATS))


def fwd_and_fwd_bwd(forward, inputs: list[torch.Tensor], device: torch.device,
                    min_run_time: float) -> tuple[float, float]:
    """Seconds per forward (no autograd) and per forward + backward to ``inputs``."""
    with torch.no_grad():
        fwd = best_time(forward, device, min_run_time)
    grad_out = torch.randn_like(forward())

    def step():
        torch.autograd.grad(forward(), inputs, grad_out)

    return fwd, best_time(step, device, min_run_time)


def single_mask_rows(device: torch.device, batches: list[int], min_run_time: float) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen).to(device).requires_grad_()
    bias = torch.randn(OUT_FEATURES, generator=gen).to(device).requires_grad_()
    keep = (torch.rand(OUT_FEATURES, IN_FEATURES, generator=gen) < DENSITY).to(device)
    pruned = torch.nn.Linear(IN_FEATURES, OUT_FEATURES).to(device)
    with torch.no_grad():
        pruned.weight.copy_(weight)
        pruned.bias.copy_(bias)
    prune.custom_from_mask(pruned, "weight", keep)
    masks = {"bool": (keep, False), "packed": (pack_mask(keep), True)}
    rows = []
    for batch in batches:
        x = torch.randn(batch, IN_FEATURES, generator=gen).to(device).requires_grad_()
        dense = fwd_and_fwd_bwd(lambda: F.linear(x, weight, bias), [x, weight, bias], device,
                                min_run_time)
        float_mask = keep.float()
        w_mask = fwd_and_fwd_bwd(lambda: F.linear(x, weight * float_mask, bias),
                                 [x, weight, bias], device, min_run_time)
        pruned_time = fwd_and_fwd_bwd(lambda: pruned(x), [x, pruned.weight_orig, pruned.bias],
                                      device, min_run_time)
        with torch.no_grad():
            w_mask_peak = peak_memory_bytes(lambda: F.linear(x, weight * float_mask, bias), device)
        for name, (mask, packed) in masks.items():
            ours = fwd_and_fwd_bwd(lambda: masked_linear(x, weight, mask, bias, packed=packed),
                                   [x, weight, bias], device, min_run_time)
            with torch.no_grad():
                peak = peak_memory_bytes(
                    lambda: masked_linear(x, weight, mask, bias, packed=packed), device)
            for i, phase in enumerate(("fwd", "fwd+bwd")):
                rows.append({
                    "case": "one mask", "mask": name, "batch": batch, "phase": phase,
                    "masked_linear_ms": ours[i] * 1e3, "dense_ms": dense[i] * 1e3,
                    "w*mask_ms": w_mask[i] * 1e3, "prune_ms": pruned_time[i] * 1e3,
                    "ratio_to_dense": ours[i] / dense[i],
                    "speedup_vs_w*mask": w_mask[i] / ours[i],
                    "speedup_vs_prune": pruned_time[i] / ours[i],
                    "peak_MiB": peak / 2**20, "w*mask_peak_MiB": w_mask_peak / 2**20,
                })
            print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def candidate_rows(device: torch.device, batches: list[int], min_run_time: float) -> list[dict]:
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen).to(device).requires_grad_()
    bias = torch.randn(OUT_FEATURES, generator=gen).to(device).requires_grad_()
    keep = (torch.rand(CANDIDATES, OUT_FEATURES, IN_FEATURES, generator=gen) < DENSITY).to(device)
    float_masks = keep.float()
    masks = {"bool": (keep, False), "packed": (pack_mask(keep), True)}
    rows = []
    for batch in batches:
        x = torch.randn(CANDIDATES, batch, IN_FEATURES, generator=gen).to(device).requires_grad_()

        def loop():
            return torch.stack([F.linear(x[k], weight * float_masks[k], bias)
                                for k in range(CANDIDATES)])

        baseline = fwd_and_fwd_bwd(loop, [x, weight, bias], device, min_run_time)
        with torch.no_grad():
            loop_peak = peak_memory_bytes(loop, device)
        for name, (mask, packed) in masks.items():
            ours = fwd_and_fwd_bwd(lambda: masked_linear(x, weight, mask, bias, packed=packed),
                                   [x, weight, bias], device, min_run_time)
            with torch.no_grad():
                peak = peak_memory_bytes(
                    lambda: masked_linear(x, weight, mask, bias, packed=packed), device)
            for i, phase in enumerate(("fwd", "fwd+bwd")):
                rows.append({
                    "case": f"K={CANDIDATES}", "mask": name, "batch": batch, "phase": phase,
                    "masked_linear_ms": ours[i] * 1e3, "loop_ms": baseline[i] * 1e3,
                    "speedup_vs_loop": baseline[i] / ours[i],
                    "peak_MiB": peak / 2**20, "loop_peak_MiB": loop_peak / 2**20,
                })
            print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of batch sizes, shorter runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_correctness(device)
    print("correctness: masked_linear matches the float64 reference (bool, packed, K candidates)")
    min_run_time = 0.02 if args.quick else 0.1
    batches = [1, 16, 256] if args.quick else [1, 4, 16, 64, 256, 1024, 4096]
    candidate_batches = [16] if args.quick else [1, 16, 64]
    rows = single_mask_rows(device, batches, min_run_time)
    rows += candidate_rows(device, candidate_batches, min_run_time)
    columns = ["case", "mask", "batch", "phase", "masked_linear_ms", "dense_ms", "w*mask_ms",
               "prune_ms", "loop_ms", "ratio_to_dense", "speedup_vs_w*mask", "speedup_vs_prune",
               "speedup_vs_loop", "peak_MiB", "w*mask_peak_MiB", "loop_peak_MiB"]
    notes = (f"Layer {IN_FEATURES} x {OUT_FEATURES}, mask density {DENSITY}, float32, bias; "
             f"batch = rows of x (per candidate for K={CANDIDATES}, weight shared). fwd+bwd: "
             "gradients of x, weight and bias. ratio_to_dense < 1 is faster than dense; "
             "speedup_* > 1 is faster than that baseline. Times: best of 3 medians. Peak memory "
             "of one forward."
             + (" Quick mode." if args.quick else ""))
    path = write_results("masked_linear", device, rows, columns, notes)
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""masked_conv2d benchmark: ``python -m benchmarks.masked_conv2d [--quick]``.

A typical 3x3 conv (64 -> 64 channels, 32x32, padding 1) with a random 50% mask, forward and
forward+backward, over batch sizes, against dense F.conv2d (the floor), F.conv2d(x, w * mask) and a
Conv2d pruned with torch.nn.utils.prune.custom_from_mask; and K candidate masks in one call against a
Python loop over K of F.conv2d(x_k, w * mask_k) and the reference (one grouped convolution).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from benchmarks.harness import best_of_rounds, peak_memory_bytes, write_results
from sparsenas.ops import _reference, masked_conv2d

CHANNELS, SIZE, KERNEL, DENSITY = 64, 32, 3, 0.5


def _inputs(batch: int, candidates: int | None, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lead = () if candidates is None else (candidates,)
    x = torch.randn(*lead, batch, CHANNELS, SIZE, SIZE, generator=gen).to(device)
    weight = torch.randn(CHANNELS, CHANNELS, KERNEL, KERNEL, generator=gen).div_(24).to(device)
    mask = (torch.rand(*lead, *weight.shape, generator=gen) < DENSITY).to(device)
    bias = torch.randn(CHANNELS, generator=gen).to(device)
    return x, weight, mask, bias


def _with_backward(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]):
    def run():
        out = forward()
        torch.autograd.grad(out, leaves, torch.ones_like(out))
    return run


def check_correctness(device: torch.device) -> None:
    for candidates in (None, 4):
        x, weight, mask, bias = _inputs(3, candidates, device, seed=1)
        soft = torch.rand(mask.shape, device=device).requires_grad_()
        leaves = [x.requires_grad_(), weight.requires_grad_(), soft, bias.requires_grad_()]
        out = masked_conv2d(x, weight, soft, bias, 1, 1)
        expected = _reference.masked_conv2d(x, weight, soft, bias, (1, 1), (1, 1))
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
        grad = torch.randn_like(out)
        for got, want in zip(torch.autograd.grad(out, leaves, grad),
                             torch.autograd.grad(expected, leaves, grad)):
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


def _single_mask_methods(batch: int, device: torch.device):
    x, weight, mask, bias = _inputs(batch, None, device)
    x.requires_grad_()
    weight.requires_grad_()
    pruned = nn.Conv2d(CHANNELS, CHANNELS, KERNEL, padding=1, device=device)
    with torch.no_grad():
        pruned.weight.copy_(weight)
        pruned.bias.copy_(bias)
    prune.custom_from_mask(pruned, "weight", mask)
    methods = {
        "dense F.conv2d": (lambda: F.conv2d(x, weight, bias, 1, 1), [x, weight]),
        "F.conv2d(x, w*mask)": (lambda: F.conv2d(x, weight * mask, bias, 1, 1), [x, weight]),
        "prune.custom_from_mask": (lambda: pruned(x), [x, pruned.weight_orig]),
        "sparsenas masked_conv2d": (lambda: masked_conv2d(x, weight, mask, bias, 1, 1),
                                    [x, weight]),
    }
    return methods, "dense F.conv2d", "F.conv2d(x, w*mask)"


def _candidate_methods(batch: int, candidates: int, device: torch.device):
    x, weight, mask, bias = _inputs(batch, candidates, device)
    x.requires_grad_()
    weight.requires_grad_()

    def loop():
        return torch.stack([F.conv2d(x[k], weight * mask[k], bias, 1, 1) for k in range(candidates)])

    methods = {
        "loop over K of F.conv2d(x_k, w*mask_k)": (loop, [x, weight]),
        "reference (grouped conv over K)": (
            lambda: _reference.masked_conv2d(x, weight, mask, bias, (1, 1), (1, 1)), [x, weight]),
        "sparsenas masked_conv2d, K masks": (
            lambda: masked_conv2d(x, weight, mask, bias, 1, 1), [x, weight]),
    }
    return methods, "loop over K of F.conv2d(x_k, w*mask_k)", "loop over K of F.conv2d(x_k, w*mask_k)"


def _measure(form: str, batch: int, methods: dict, floor: str, baseline: str,
             device: torch.device, min_run_time: float, rounds: int) -> list[dict]:
    rows = []
    for pass_name in ("fwd", "fwd+bwd"):
        calls = {name: torch.no_grad()(forward) if pass_name == "fwd"
                 else _with_backward(forward, leaves)
                 for name, (forward, leaves) in methods.items()}
        times = best_of_rounds(calls, device, min_run_time, rounds)
        peaks = {name: peak_memory_bytes(fn, device) for name, fn in calls.items()}
        for name in methods:
            rows.append({
                "form": form, "pass": pass_name, "batch": batch, "method": name,
                "ms": times[name] * 1e3,
                "vs floor": times[name] / times[floor],
                "speedup vs baseline": times[baseline] / times[name],
                "peak MiB": peaks[name] / 2**20,
            })
            print(f"{form:>8} {pass_name:>7} batch {batch:>4} {name:<42} {times[name] * 1e3:9.2f} ms"
                  f"  {rows[-1]['vs floor']:5.2f}x floor  {rows[-1]['speedup vs baseline']:5.2f}x"
                  f" faster than baseline  {rows[-1]['peak MiB']:8.1f} MiB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--candidates", type=int, help="K (default 16, 4 with --quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    candidates = args.candidates or (4 if args.quick else 16)
    check_correctness(device)
    print("correctness: native matches the reference (forward and gradients)", flush=True)
    batches = [1, 16] if args.quick else [1, 4, 16, 64, 256]
    candidate_batches = [1] if args.quick else [1, 4, 16]
    min_run_time = 0.05 if args.quick else 0.2
    rounds = 1 if args.quick else 5
    rows = []
    for batch in batches:
        rows += _measure("1 mask", batch, *_single_mask_methods(batch, device), device,
                         min_run_time, rounds)
    for batch in candidate_batches:
        rows += _measure(f"K={candidates}", batch, *_candidate_methods(batch, candidates, device),
                         device, min_run_time, rounds)
    if not args.quick:
        notes = (f"conv {CHANNELS}->{CHANNELS}, {KERNEL}x{KERNEL}, {SIZE}x{SIZE}, padding 1, "
                 f"mask density {DENSITY}. 'vs floor': time / dense F.conv2d (1 mask) or / the "
                 f"loop over K (K masks); 'speedup vs baseline': F.conv2d(x, w*mask) time / "
                 f"method time (1 mask), loop-over-K time / method time (K masks). fwd+bwd "
                 f"computes the gradients of x and w. Each time is the best of {rounds} alternating "
                 f"rounds of medians (the machine is shared). 'peak MiB' is the harness's "
                 f"profiler-based figure, which counts an allocation once per enclosing op, so "
                 f"methods with deeper op nesting (the custom op's autograd wrapper) read higher "
                 f"than what they allocate.")
        path = write_results("masked_conv2d", device, rows,
                             ["form", "pass", "batch", "method", "ms", "vs floor",
                              "speedup vs baseline", "peak MiB"], notes)
        print(f"results: {path}")


if __name__ == "__main__":
    main()

"""Mask sampling benchmark: exact-k uniform masks, top-k and Gumbel-top-k masks,
against the PyTorch code a researcher would write, measured side by side in one run.

    python -m benchmarks.sampling [--quick] [--device cpu|cuda]

Baselines for exact-k masks of B rows of n: ``torch.rand(B, n).topk(k).indices`` + scatter,
``torch.rand(B, n).argsort()`` + scatter, and a loop of ``torch.randperm(n)`` per row. Ratios are
the fastest baseline's time over ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import torch
from torch import Tensor

from benchmarks.harness import peak_memory_bytes, time_call, write_results
from sparsenas.ops import pack_mask
from sparsenas.sampling import _reference, gumbel_topk_masks, topk_masks, uniform_k_masks

COLUMNS = ["problem", "B", "n", "k", "method", "ms", "peak_MiB", "speedup_vs_fastest_baseline"]


def _scatter(indices: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.zeros(shape, dtype=torch.bool, device=indices.device).scatter_(1, indices, True)


def uniform_baselines(rows: int, n: int, k: int, device: torch.device) -> dict[str, Callable[[], Tensor]]:
    def rand_topk() -> Tensor:
        return _scatter(torch.rand(rows, n, device=device).topk(k, dim=1).indices, (rows, n))

    def rand_argsort() -> Tensor:
        return _scatter(torch.rand(rows, n, device=device).argsort(dim=1)[:, :k], (rows, n))

    def randperm_loop() -> Tensor:
        mask = torch.zeros(rows, n, dtype=torch.bool, device=device)
        for row in range(rows):
            mask[row, torch.randperm(n, device=device)[:k]] = True
        return mask

    return {"torch.rand+topk+scatter": rand_topk, "torch.rand+argsort+scatter": rand_argsort,
            "torch.randperm loop": randperm_loop}


def _measure(problem: str, rows: int, n: int, k: int, ours: dict[str, Callable[[], Tensor]],
             baselines: dict[str, Callable[[], Tensor]], device: torch.device,
             min_run_time: float) -> list[dict]:
    times = {name: time_call(fn, device, min_run_time) for name, fn in {**baselines, **ours}.items()}
    fastest = min(times[name] for name in baselines)
    results = []
    for name, fn in {**baselines, **ours}.items():
        results.append({
            "problem": problem, "B": rows, "n": n, "k": k, "method": name,
            "ms": times[name] * 1e3, "peak_MiB": peak_memory_bytes(fn, device) / 2**20,
            "speedup_vs_fastest_baseline": fastest / times[name],
        })
        print(f"{problem:10s} B={rows:6d} n={n:6d} k={k:6d} {name:30s} {times[name] * 1e3:9.3f} ms"
              f"  x{fastest / times[name]:.2f} vs fastest baseline")
    return results


def check_uniform(rows: int, n: int, k: int, device: torch.device,
                  baselines: dict[str, Callable[[], Tensor]]) -> None:
    masks = uniform_k_masks(rows, n, k, 0, device=device)
    assert bool((masks.sum(1) == k).all()), "exact-k masks must have k ones per row"
    packed = uniform_k_masks(rows, n, k, 0, packed=True, device=device)
    assert torch.equal(packed, pack_mask(masks))
    head = torch.full((4,), k, dtype=torch.int64)
    assert torch.equal(masks[:4].cpu(), _reference.uniform_k_mask(head, n, 0)), "native != reference"
    for name, fn in baselines.items():
        assert bool((fn().sum(1) == k).all()), name


def bench_uniform(rows: int, n: int, k: int, device: torch.device, min_run_time: float) -> list[dict]:
    baselines = uniform_baselines(rows, n, k, device)
    check_uniform(rows, n, k, device, baselines)
    ours = {
        "sparsenas uniform_k_masks": lambda: uniform_k_masks(rows, n, k, 1, device=device),
        "sparsenas uniform_k_masks packed": lambda: uniform_k_masks(rows, n, k, 1, packed=True,
                                                                    device=device),
    }
    return _measure("exact-k", rows, n, k, ours, baselines, device, min_run_time)


def bench_topk(rows: int, n: int, k: int, device: torch.device, min_run_time: float) -> list[dict]:
    scores = torch.randn(rows, n, device=device)
    baselines = {"torch.topk+scatter": lambda: _scatter(scores.topk(k, dim=1).indices, (rows, n))}
    assert torch.equal(topk_masks(scores, k), baselines["torch.topk+scatter"]())
    ours = {"sparsenas topk_masks": lambda: topk_masks(scores, k)}
    return _measure("top-k", rows, n, k, ours, baselines, device, min_run_time)


def bench_gumbel(rows: int, n: int, k: int, device: torch.device, min_run_time: float) -> list[dict]:
    weights = torch.rand(rows, n, device=device) + 0.01

    def gumbel_topk() -> Tensor:  # the usual Gumbel-top-k in torch
        gumbel = -torch.log(-torch.log(torch.rand(rows, n, device=device)))
        return _scatter((weights.log() + gumbel).topk(k, dim=1).indices, (rows, n))

    def multinomial() -> Tensor:
        return _scatter(torch.multinomial(weights, k, replacement=False), (rows, n))

    baselines = {"torch Gumbel+topk+scatter": gumbel_topk, "torch.multinomial+scatter": multinomial}
    assert bool((gumbel_topk_masks(weights, k, 0).sum(1) == k).all())
    ours = {"sparsenas gumbel_topk_masks": lambda: gumbel_topk_masks(weights, k, 1)}
    return _measure("gumbel", rows, n, k, ours, baselines, device, min_run_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two problem sizes, short timings")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for every method (default: torch's choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    min_run_time = 0.05 if args.quick else 0.3
    rows: list[dict] = []
    rows += bench_uniform(1024, 4096, 2048, device, min_run_time)
    rows += bench_uniform(1024, 4096, 205, device, min_run_time)
    if not args.quick:
        rows += bench_uniform(16384, 256, 64, device, min_run_time)
        rows += bench_uniform(64, 65536, 6554, device, min_run_time)
        rows += bench_topk(1024, 4096, 2048, device, min_run_time)
        rows += bench_gumbel(1024, 4096, 205, device, min_run_time)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes = ("speedup_vs_fastest_baseline = fastest baseline time / method time, same problem, same "
             f"run, {torch.get_num_threads()} torch thread(s) for every method. Target for "
             f"exact-k 1024 x 4096 on CPU: >= 10. Machine load average at the end: {load:.1f} "
             f"on {os.cpu_count()} cores (a shared machine: timings of parallel methods suffer most).")
    name = "sampling" + ("_quick" if args.quick else "")
    if args.threads is not None:
        name += f"_{args.threads}thread"
    path = write_results(name, device, rows, COLUMNS, notes)
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""Sparse execution benchmark.

    python -m benchmarks.sparse [--quick] [--calibrate] [--device cpu|cuda]

Unstructured: a masked Linear at 80/90/95/99% sparsity, batch 1..256: dense ``F.linear`` (the
baseline), ``w.to_sparse_csr()`` + ``torch.sparse.mm``, BSR (``to_sparse_bsr``, 4x4 and 16x16
blocks), sparsenas ``sparse_linear`` (CSR) and, for reference, ``nm_linear`` at 2:4.
Structured: an MLP and a CNN at 90% node sparsity: the dense-masked network (baseline), the same
computation by slicing the kept weights at every call, and the :func:`compact` network.
Every method is checked against the dense result first. Ratios are speedups over the baseline
measured in the same run (> 1: faster).

``--calibrate`` measures the crossover points the selector uses (sparsenas/sparse/crossovers.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.benchmark as torch_benchmark
from torch import Tensor, nn

from benchmarks.harness import device_name, peak_memory_bytes, time_call, write_results
from sparsenas.nn import NodeMask, node_mask_modules, set_node_masks
from sparsenas.sparse import compact
from sparsenas.sparse.formats import CSRWeight, NMWeight
from sparsenas.sparse.selector import CROSSOVERS_PATH

# torch warns that its sparse CSR / BSR support is in beta on every conversion.
warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")


def cpu_time_call(fn: Callable[[], object], min_run_time: float) -> float:
    """Median CPU seconds per call of ``fn`` on one thread (``time.thread_time``): the work the
    call costs, undistorted by other processes sharing the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn()
        timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1,
                                      timer=time.thread_time)
        return timer.blocked_autorange(min_run_time=min_run_time).median
    finally:
        torch.set_num_threads(threads)


def measure(methods: dict[str, Callable[[], object]], device: torch.device, min_run_time: float,
            rounds: int) -> dict[str, tuple[float, float | None]]:
    """(wall seconds, single-thread CPU seconds) per method: each the minimum of its medians over
    ``rounds`` rounds that visit the methods in turn, so that a burst of load from other
    processes hits one round rather than one method. CPU seconds only on CPU."""
    wall = {name: float("inf") for name in methods}
    cpu: dict[str, float | None] = {name: None for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            wall[name] = min(wall[name], time_call(fn, device, min_run_time))
            if device.type == "cpu":
                cpu[name] = min(cpu[name] or float("inf"), cpu_time_call(fn, min_run_time))
    return {name: (wall[name], cpu[name]) for name in methods}


def timing_columns(times: dict[str, tuple[float, float | None]], name: str, baseline: str,
                   suffix: str = "dense") -> dict:
    wall, cpu = times[name]
    row = {"ms": wall * 1e3, f"speedup_vs_{suffix}": times[baseline][0] / wall}
    if cpu is not None:
        row["cpu_ms_1thread"] = cpu * 1e3
        row[f"cpu_speedup_vs_{suffix}"] = times[baseline][1] / cpu
    return row


def random_mask(shape: tuple[int, ...], sparsity: float, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator) >= sparsity


def unstructured_methods(weight: Tensor, mask: Tensor, with_bsr: bool
                         ) -> dict[str, Callable[[Tensor], Tensor]]:
    masked = weight * mask
    csr = CSRWeight.from_dense(weight, mask)
    methods: dict[str, Callable[[Tensor], Tensor]] = {
        "dense F.linear": lambda x: F.linear(x, masked),
        "torch CSR": lambda x, w=masked.to_sparse_csr(): torch.sparse.mm(w, x.t()).t(),
    }
    if with_bsr:
        for block in (4, 16):
            methods[f"torch BSR {block}x{block}"] = (
                lambda x, w=masked.to_sparse_bsr((block, block)): torch.sparse.mm(w, x.t()).t())
    methods["sparsenas sparse_linear"] = csr.linear
    return methods


def bench_unstructured(device: torch.device, quick: bool, min_run_time: float,
                       rounds: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    features = 1024
    sparsities = [0.95] if quick else [0.8, 0.9, 0.95, 0.99]
    batches = [1, 16] if quick else [1, 4, 16, 64, 256]
    weight = torch.randn(features, features, generator=generator).to(device)
    rows = []
    for sparsity in sparsities:
        mask = random_mask(weight.shape, sparsity, generator).to(device)
        methods = unstructured_methods(weight, mask, with_bsr=device.type == "cpu" and not quick)
        for batch in batches:
            x = torch.randn(batch, features, generator=generator).to(device)
            expected = F.linear(x, weight * mask)
            for method in methods.values():
                torch.testing.assert_close(method(x), expected, rtol=1e-4, atol=1e-4)
            times = measure({name: (lambda m=method: m(x)) for name, method in methods.items()},
                            device, min_run_time, rounds)
            for name in methods:
                peak = ""
                if batch == 16 and not quick:
                    peak = peak_memory_bytes(lambda: methods[name](x), device) / 2**20
                rows.append({"case": f"unstructured {features}x{features}",
                             "sparsity": sparsity, "batch": batch, "method": name,
                             **timing_columns(times, name, "dense F.linear"), "peak_mb": peak})
    # N:M 2:4 (50%): the N:M kernel against dense.
    nm = NMWeight.from_dense(weight, 2, 4)
    masked = nm.to_dense()
    for batch in batches:
        x = torch.randn(batch, features, generator=generator).to(device)
        torch.testing.assert_close(nm.linear(x), F.linear(x, masked), rtol=1e-4, atol=1e-4)
        times = measure({"dense F.linear": lambda: F.linear(x, masked),
                         "sparsenas nm_linear": lambda: nm.linear(x)}, device, min_run_time, rounds)
        rows.append({"case": f"N:M 2:4 {features}x{features}", "sparsity": 0.5, "batch": batch,
                     "method": "sparsenas nm_linear",
                     **timing_columns(times, "sparsenas nm_linear", "dense F.linear")})
    return rows


def masked_mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for inputs, outputs in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(inputs, outputs), nn.ReLU(), NodeMask(outputs)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def masked_cnn(channels: list[int], classes: int, size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for inputs, outputs in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                   nn.ReLU(), NodeMask(outputs, dim=1), nn.MaxPool2d(2)]
    spatial = size // 2 ** (len(channels) - 1)
    layers += [nn.Flatten(), nn.Linear(channels[-1] * spatial * spatial, classes)]
    return nn.Sequential(*layers)


def set_random_node_masks(model: nn.Module, sparsity: float, generator: torch.Generator) -> None:
    masks = {}
    for name, module in node_mask_modules(model).items():
        keep = max(1, round((1 - sparsity) * module.num_nodes))
        mask = torch.zeros(module.num_nodes, dtype=torch.bool)
        mask[torch.randperm(module.num_nodes, generator=generator)[:keep]] = True
        masks[name] = mask
    set_node_masks(model, masks)


def sliced_forward(model: nn.Sequential) -> Callable[[Tensor], Tensor]:
    """The masked network computed by gathering the kept rows / columns of every weight at each
    call (what one writes without a compaction step)."""
    layers = list(model)

    def forward(x: Tensor) -> Tensor:
        keep_in: Tensor | None = None
        for i, layer in enumerate(layers):
            following_mask = next((m for m in layers[i + 1:i + 4] if isinstance(m, NodeMask)), None)
            keep_out = None
            if isinstance(layer, (nn.Linear, nn.Conv2d)) and following_mask is not None:
                keep_out = following_mask.mask.nonzero().flatten()
            if isinstance(layer, nn.Linear):
                weight = layer.weight if keep_in is None else layer.weight[:, keep_in]
                bias = layer.bias
                if keep_out is not None:
                    weight, bias = weight[keep_out], bias[keep_out]
                x = F.linear(x, weight, bias)
                keep_in = keep_out
            elif isinstance(layer, nn.Conv2d):
                weight = layer.weight if keep_in is None else layer.weight[:, keep_in]
                weight = weight if keep_out is None else weight[keep_out]
                x = F.conv2d(x, weight, None, layer.stride, layer.padding)
                keep_in = keep_out
            elif isinstance(layer, nn.BatchNorm2d):
                index = keep_in if keep_in is not None else slice(None)
                x = F.batch_norm(x, layer.running_mean[index], layer.running_var[index],
                                 layer.weight[index], layer.bias[index], False, 0.0, layer.eps)
            elif isinstance(layer, nn.Flatten):
                spatial = x.shape[2] * x.shape[3]
                x = x.flatten(1)
                if keep_in is not None:
                    keep_in = (keep_in[:, None] * spatial + torch.arange(spatial,
                                                                         device=x.device)).flatten()
            elif not isinstance(layer, NodeMask):
                x = layer(x)
        return x

    return forward


def bench_structured(device: torch.device, quick: bool, min_run_time: float,
                     rounds: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    sparsity = 0.9
    cases = [("MLP 784-2048-2048-2048-10", masked_mlp([784, 2048, 2048, 2048, 10]), (784,),
              [16] if quick else [1, 16, 256]),
             ("CNN 3-64-128-256 on 32x32", masked_cnn([3, 64, 128, 256], 10, 32), (3, 32, 32),
              [4] if quick else [1, 16, 64])]
    rows = []
    for case, model, sample_shape, batches in cases:
        model = model.to(device).eval()
        set_random_node_masks(model, sparsity, generator)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        small = compact(model)
        sliced = sliced_forward(model)
        methods = {"dense masked": model, "slicing": sliced, "compacted": small}
        for batch in batches:
            x = torch.randn(batch, *sample_shape, generator=generator).to(device)
            with torch.no_grad():
                expected = model(x)
                for method in methods.values():
                    torch.testing.assert_close(method(x), expected, rtol=1e-4, atol=1e-4)
                times = measure({name: (lambda m=method: m(x)) for name, method in methods.items()},
                                device, min_run_time, rounds)
                peaks = {name: peak_memory_bytes(lambda: method(x), device) / 2**20
                         for name, method in methods.items()}
            for name in methods:
                rows.append({"case": f"{case}, 90% nodes", "sparsity": sparsity, "batch": batch,
                             "method": name, **timing_columns(times, name, "dense masked"),
                             "speedup_vs_slicing": times["slicing"][0] / times[name][0],
                             "peak_mb": peaks[name]})
    return rows


def calibrate(device: torch.device, min_run_time: float) -> dict:
    """Crossover points of the selector, measured on this machine (on CPU as single-thread CPU
    time, which other processes' load does not distort; on CUDA as the harness's time):
    - unstructured: per batch size, the lowest sparsity from which on sparse_linear beats dense
      F.linear on a 1024x1024 layer (1.0: never);
    - unstructured_min_weights: the smallest square layer (in * out weights) where sparse_linear
      beats dense at 95% sparsity and batch 1;
    - nm: per batch size, whether nm_linear at 2:4 beats dense;
    - structured: the lowest node sparsity at which the compacted 1024-wide Linear beats the dense
      masked one at batch 16."""
    def cost(fn: Callable[[], object]) -> float:
        return (cpu_time_call(fn, min_run_time) if device.type == "cpu"
                else time_call(fn, device, min_run_time))

    generator = torch.Generator().manual_seed(2)
    batches = [1, 4, 16, 64, 256]
    sparsities = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]
    features = 1024
    weight = torch.randn(features, features, generator=generator).to(device)
    csr = {s: CSRWeight.from_dense(weight, random_mask(weight.shape, s, generator).to(device))
           for s in sparsities}
    nm = NMWeight.from_dense(weight, 2, 4)
    nm_dense = nm.to_dense()
    unstructured, nm_faster = [], []
    for batch in batches:
        x = torch.randn(batch, features, generator=generator).to(device)
        dense = cost(lambda: F.linear(x, weight))
        crossover = 1.0
        for s in reversed(sparsities):
            if cost(lambda: csr[s].linear(x)) >= dense:
                break
            crossover = s
        unstructured.append({"batch": batch, "min_sparsity": crossover})
        nm_faster.append({"batch": batch, "n": 2, "m": 4,
                          "faster": cost(lambda: nm.linear(x)) < cost(lambda: F.linear(x, nm_dense))})
    min_weights = 2 ** 62
    for size in (64, 128, 256, 512, 1024):
        w = torch.randn(size, size, generator=generator).to(device)
        sparse = CSRWeight.from_dense(w, random_mask(w.shape, 0.95, generator).to(device))
        x = torch.randn(1, size, generator=generator).to(device)
        if cost(lambda: sparse.linear(x)) < cost(lambda: F.linear(x, w)):
            min_weights = size * size
            break
    structured = 1.0
    x = torch.randn(16, features, generator=generator).to(device)
    for node_sparsity in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9):
        keep = max(1, round((1 - node_sparsity) * features))
        small = weight[:keep].contiguous()
        node_mask = torch.zeros(1, features, device=device)
        node_mask[:, :keep] = 1
        if cost(lambda: F.linear(x, small)) < cost(lambda: F.linear(x, weight) * node_mask):
            structured = node_sparsity
            break
    return {
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "measure": "single-thread CPU time" if device.type == "cpu" else "harness time_call",
        "unstructured": unstructured,
        "unstructured_min_weights": min_weights,
        "nm": nm_faster,
        "structured_min_node_sparsity": structured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, well under a minute")
    parser.add_argument("--calibrate", action="store_true",
                        help="re-measure the selector's crossover points and store them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    min_run_time = 0.02 if args.quick else 0.1
    rounds = 1 if args.quick else 3
    if args.calibrate:
        crossovers = calibrate(device, min_run_time)
        CROSSOVERS_PATH.write_text(json.dumps(crossovers, indent=2) + "\n")
        print(json.dumps(crossovers, indent=2))
        print(f"wrote {CROSSOVERS_PATH}")
        return
    rows = bench_unstructured(device, args.quick, min_run_time, rounds)
    rows += bench_structured(device, args.quick, min_run_time, rounds)
    columns = ["case", "sparsity", "batch", "method", "ms", "speedup_vs_dense", "cpu_ms_1thread",
               "cpu_speedup_vs_dense", "speedup_vs_slicing", "peak_mb"]
    notes = ("ms / speedup_vs_dense: wall time with all torch threads (the harness's median; "
             f"every time in this table is the minimum over {rounds} interleaved rounds) and the dense baseline's wall time / this "
             "method's, same run (dense F.linear for unstructured, the dense masked network for "
             "structured). cpu_ms_1thread / cpu_speedup_vs_dense: the same on one thread in CPU "
             "time (time.thread_time), which load from other processes on a shared machine does "
             "not distort. speedup_vs_slicing: wall-time ratio to gathering the kept weights at "
             "every call. peak_mb: peak CPU allocations of one call (profiler), at batch 16 for "
             "unstructured." + (" Quick run." if args.quick else ""))
    path = write_results("sparse" + ("_quick" if args.quick else ""), device, rows, columns, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()

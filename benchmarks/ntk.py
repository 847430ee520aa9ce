"""Empirical-NTK benchmark: sparsenas.ntk.empirical_ntk against

- the torch.func Jacobian contraction (PyTorch tutorial "Neural Tangent Kernels":
  vmap(jacrev) per-example Jacobians, contracted with einsum),
- the torch.func NTK-vector-product method of the same tutorial (vjp then jvp per pair of
  examples, vmapped over pairs; applied to chunks of the first batch so it fits in memory),
- the classic per-example backward loop of NAS code (one backward per example and output,
  gradients stacked, Gram).

Full mode (the n·O × n·O kernel) on float32 models; sparsenas accumulates in float64 (its
default). Each method is first checked against a float64 torch.func reference (relative error,
max |Δ| / max |Θ|), then timed; peak memory from the harness. Baselines whose Jacobian would
exceed the memory cap, or whose run would take minutes, are marked skipped (with the reason).

Floors: each sparsenas row reports the fraction of its FLOP floor and of its byte floor that it
reaches. The FLOP floor is the arithmetic of the cheapest route the engine has per layer (Gram
route, materialised per-example gradients, or the masked block), counted with the kernel's
symmetry, at the GEMM rate of a torch.mm measured in the same run and condition; the byte floor
is one write of the kernel matrix at the copy bandwidth measured alike.

``--contended`` times every case twice, idle and with a competing 2-thread torch.mm job on the
same cores (a subprocess started before and stopped after the timings), and reports how much of
its idle speedup each method keeps. With libgomp's default (spinning) wait policy, an idle
OpenMP thread of the timed process can hold the core its working thread needs, and every
parallel region of that process (torch's and sparsenas's alike) then stalls for a scheduler
slice: timings flip between two levels about 10× apart. OMP_WAIT_POLICY=passive in the
environment of the timed process removes the slow level.

Run from the repository root: ``python -m benchmarks.ntk [--quick] [--contended]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import time

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from benchmarks.harness import (best_of_rounds, competing_job, copy_bandwidth,
                                peak_memory_bytes, time_call, write_results)
from sparsenas.ntk import empirical_ntk

JACOBIAN_CAP_BYTES = 2 << 30   # skip a baseline whose Jacobian needs more
NTK_VPS_MAX_PAIRS = 64 * 64    # the pairwise method is O(n² O) vjp+jvp: small batches only
LOOP_MAX_BACKWARDS = 2600      # classic loop: n·O backward passes through the batch graph
SLOW_CALL_SECONDS = 2.0        # slower calls are timed once
ROUNDS = 3                     # the others: best of this many medians, in alternating rounds
GEMM_RATE_SHAPE = (2560, 256)  # torch.mm of X [rows, k] by Xᵀ: the benchmark MLP's largest Gram
def make_mlp(outputs: int, in_features: int = 32, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, outputs))


def make_cnn(outputs: int, head: str = "pool") -> nn.Module:
    """Two 3x3 convs on 3×32×32 inputs, then global average pooling and a 32 → O classifier
    ("pool", 5.4k parameters) or a classifier on the flattened 32×8×8 features ("flatten",
    25k parameters)."""
    features = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()]
    if head == "pool":
        return nn.Sequential(*features, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(32, outputs))
    return nn.Sequential(*features, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, outputs))


def random_masks(model: nn.Module, density: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Unstructured masks on every hidden weight (not the first / last layer)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return {f"{name}.weight": torch.rand(m.weight.shape, generator=generator) < density
            for name, m in layers[1:-1]}


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def jacobian_contraction(model: nn.Module, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
    """Tutorial method: per-example Jacobians by vmap(jacrev), contracted with einsum."""
    params = _params(model)

    def single(p: dict[str, Tensor], example: Tensor) -> Tensor:
        return functional_call(model, p, (example.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(single), (None, 0))(params, x)
    n, O, total = x.shape[0], 0, None
    for name, j in jac.items():
        if name in masks:
            j = j * masks[name]
        j = j.flatten(2)
        O = j.shape[1]
        term = torch.einsum("Naf,Mbf->NaMb", j, j)
        total = term if total is None else total + term
    return total.reshape(n * O, n * O)


def ntk_vector_products(model: nn.Module, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
    """Tutorial method: Θ(x1, x2) column by column as jvp(vjp(basis)), vmapped over example
    pairs; the first batch is processed in chunks that keep the vmapped pairs in memory."""
    params = _params(model)
    mask_tensors = {k: masks[k].to(v.dtype) for k, v in params.items() if k in masks}

    def func(p: dict[str, Tensor], example: Tensor) -> Tensor:
        return functional_call(model, p, (example.unsqueeze(0),)).squeeze(0)

    def get_ntk(x1: Tensor, x2: Tensor) -> Tensor:
        output, vjp_fn = vjp(lambda p: func(p, x1), params)

        def get_ntk_slice(vec: Tensor) -> Tensor:
            (vjps,) = vjp_fn(vec)
            vjps = {k: v * mask_tensors[k] if k in mask_tensors else v for k, v in vjps.items()}
            _, jvps = jvp(lambda p: func(p, x2), (params,), (vjps,))
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device)
        return vmap(get_ntk_slice)(basis)

    rows = []
    for start in range(0, x.shape[0], 2):
        rows.append(vmap(vmap(get_ntk, (None, 0)), (0, None))(x[start:start + 2], x))
    result = torch.cat(rows)  # [N, M, O, O]
    n, O = result.shape[0], result.shape[2]
    return result.permute(0, 2, 1, 3).reshape(n * O, n * O)


def per_example_loop(model: nn.Module, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
    """NAS-code baseline: forward the batch, one backward per (example, output), stack, Gram."""
    params = [p for _, p in model.named_parameters()]
    names = [k for k, _ in model.named_parameters()]
    y = model(x)
    rows = []
    for i in range(y.shape[0]):
        for o in range(y.shape[1]):
            grads = torch.autograd.grad(y[i, o], params, retain_graph=True)
            rows.append(torch.cat([(g * masks[k] if k in masks else g).flatten()
                                   for k, g in zip(names, grads)]))
    jac = torch.stack(rows)
    return jac @ jac.T


def reference(model: nn.Module, x: Tensor, masks: dict[str, Tensor]) -> Tensor:
    """The float64 torch.func Jacobian contraction (the correctness oracle)."""
    return jacobian_contraction(copy.deepcopy(model).double(), x.double(), masks)


def relative_error(got: Tensor, expected: Tensor) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


def machine_rates(device: torch.device, kernel_elements: int) -> dict[str, float]:
    """GEMM FLOP/s per dtype (torch.mm at GEMM_RATE_SHAPE) and copy bandwidth in bytes/s (a
    copy_ of a kernel-sized float64 matrix, read + written bytes)."""
    rates = {}
    rows, k = GEMM_RATE_SHAPE
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(rows, k, dtype=dtype, device=device)
        seconds = time_call(lambda: torch.mm(x, x.T), device, 0.1)
        rates[str(dtype)] = 2 * rows * rows * k / seconds
    rates["copy"] = copy_bandwidth(8 * max(kernel_elements, 1 << 20), device)
    return rates


def _layer_shapes(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, int]]:
    """(name, module, positions T) of every Linear / Conv2d layer, from one forward pass."""
    shapes, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            def hook(m, inputs, output, name=name):
                positions = output[0, 0].numel() if isinstance(m, nn.Conv2d) else (
                    output[0].numel() // m.out_features)
                shapes.append((name, m, positions))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def floor_flops(model: nn.Module, x: Tensor, outputs: int, masks: dict[str, Tensor]) -> float:
    """FLOPs (2 per multiply-add) of the full-mode kernel by the cheapest route the engine has
    per layer, counting each symmetric pair of examples once:
    Gram route (nT)²(d + 1 + p O²), per-example gradients 2nTOpd + (nO)²pd, masked block
    n²(nnz(M) + p O²) (Linear with a mask)."""
    n, total = x.shape[0], 0.0
    for name, module, T in _layer_shapes(model, x):
        groups = getattr(module, "groups", 1)
        p = module.weight.shape[0] // groups
        d = module.weight[0].numel()
        materialised = 2 * n * T * outputs * p * d + (n * outputs) ** 2 * p * d
        mask = masks.get(f"{name}.weight")
        if mask is None:
            route = min((n * T) ** 2 * (d + 1 + p * outputs ** 2), materialised)
        elif T == 1:
            route = min(n * n * (int(mask.count_nonzero()) + p * outputs ** 2), materialised)
        else:
            route = materialised
        total += groups * route
    return float(total)


def run_case(kind: str, n: int, outputs: int, masked: bool, device: torch.device,
             min_run_time: float, conditions: tuple[str, ...] = ("idle",)) -> list[dict]:
    generator = torch.Generator().manual_seed(n * 31 + outputs * 7 + masked)
    torch.manual_seed(n * 31 + outputs * 7 + masked)
    model = (make_mlp(outputs) if kind == "mlp" else make_cnn(outputs, kind.split("-")[1]))
    model = model.to(device).eval()
    shape = (n, 32) if kind == "mlp" else (n, 3, 32, 32)
    x = torch.randn(shape, generator=generator).to(device)
    masks = {k: v.to(device) for k, v in random_masks(model, 0.1, generator).items()} if masked else {}
    num_params = sum(p.numel() for p in model.parameters())
    jacobian_bytes = n * outputs * num_params * 4
    expected = reference(model, x, masks) if jacobian_bytes * 2 <= JACOBIAN_CAP_BYTES else None
    flops = {"sparsenas": floor_flops(model, x, outputs, masks),
             "jacobian_contraction": 2.0 * (n * outputs) ** 2 * num_params}
    flops["sparsenas_f32"] = flops["sparsenas"]
    flop_dtype = {"sparsenas": torch.float64, "sparsenas_f32": torch.float32,
                  "jacobian_contraction": torch.float32}
    kernel_bytes = {"sparsenas": (n * outputs) ** 2 * 8, "sparsenas_f32": (n * outputs) ** 2 * 4}

    methods = {
        "sparsenas": lambda: empirical_ntk(model, x, mode="full", masks=masks),
        "sparsenas_f32": lambda: empirical_ntk(model, x, mode="full", masks=masks,
                                               dtype=torch.float32),
        "jacobian_contraction": lambda: jacobian_contraction(model, x, masks),
        "ntk_vps": lambda: ntk_vector_products(model, x, masks),
        "per_example_loop": lambda: per_example_loop(model, x, masks),
    }
    skipped = {}
    if jacobian_bytes > JACOBIAN_CAP_BYTES:
        skipped["jacobian_contraction"] = f"Jacobian {jacobian_bytes / 2**30:.1f} GiB > cap"
    if n * n > NTK_VPS_MAX_PAIRS:
        skipped["ntk_vps"] = f"{n * n} example pairs (O(n²) vjp+jvp)"
    if n * outputs > LOOP_MAX_BACKWARDS or jacobian_bytes > JACOBIAN_CAP_BYTES:
        skipped["per_example_loop"] = f"{n * outputs} backward passes"

    label = f"{kind} n={n} O={outputs}" + (" masked 90%" if masked else "")
    exact_error = None
    if expected is not None:
        # Strict check: the engine on the float64 model equals the float64 reference. (The
        # float32 rows below carry the float32 model's own rounding, which a ReLU / max-pool
        # boundary can amplify: every float32 method then shows the same error.)
        exact = empirical_ntk(copy.deepcopy(model).double(), x.double(), mode="full", masks=masks)
        exact_error = relative_error(exact, expected)
        if exact_error > 1e-9:
            raise AssertionError(f"{label}: float64 engine differs from the reference by "
                                 f"{exact_error:.2e}")
    rows, seconds = [], {}
    for condition in conditions:
        with competing_job() if condition == "contended" else contextlib.nullcontext():
            rates = machine_rates(device, (n * outputs) ** 2)
            timed, seconds[condition] = _time_methods(
                methods, skipped, expected, label, device, min_run_time, condition,
                measure_memory=condition == conditions[0])
        for row in timed:
            name = row["method"]
            if name not in seconds[condition]:
                continue
            mine = seconds[condition][name]
            row["speedup_vs_this"] = mine / seconds[condition]["sparsenas"]
            if name in flops:
                row["floor_GFLOP"] = flops[name] / 1e9
                row["flop_floor"] = flops[name] / rates[str(flop_dtype[name])] / mine
            if name in kernel_bytes:
                row["byte_floor"] = kernel_bytes[name] / rates["copy"] / mine
            if name == "sparsenas" and exact_error is not None:
                row["rel_error_f64_model"] = exact_error
            if condition != "idle" and "idle" in seconds:
                row["slowdown"] = mine / seconds["idle"][name]
            if name.startswith("sparsenas"):
                row["note"] = ", ".join(f"{v / mine:.1f}x faster than {k}"
                                        for k, v in seconds[condition].items()
                                        if not k.startswith("sparsenas"))
                row["note"] += (f"; GEMM {rates[str(flop_dtype[name])] / 1e9:.0f} GFLOP/s, "
                                f"copy {rates['copy'] / 1e9:.1f} GB/s")
        rows += timed
    if "idle" in seconds and "contended" in seconds and "jacobian_contraction" in seconds["idle"]:
        baseline = (seconds["contended"]["jacobian_contraction"]
                    / seconds["idle"]["jacobian_contraction"])
        for row in rows:
            if row["condition"] == "contended" and row["method"].startswith("sparsenas"):
                row["speedup_kept"] = baseline / row["slowdown"]
    return rows


def _time_methods(methods: dict, skipped: dict, expected: Tensor | None, label: str,
                  device: torch.device, min_run_time: float, condition: str,
                  measure_memory: bool) -> tuple[list[dict], dict[str, float]]:
    """One row per method (checked against the reference, then timed) and the seconds of each."""
    rows, first_calls, fast = [], {}, {}
    for name, fn in methods.items():
        row = {"case": label, "condition": condition, "method": name}
        rows.append(row)
        if name in skipped:
            row["note"] = "skipped: " + skipped[name]
            continue
        start = time.perf_counter()
        value = fn()
        first_calls[name] = time.perf_counter() - start
        error = relative_error(value, expected) if expected is not None else math.nan
        if expected is not None and error > 1e-3:
            raise AssertionError(f"{label} {name}: relative error {error:.2e} vs float64 reference")
        row["rel_error"] = error
        # Calls slower than SLOW_CALL_SECONDS are timed by that first call alone.
        if first_calls[name] <= SLOW_CALL_SECONDS:
            fast[name] = fn
    results = {**first_calls, **best_of_rounds(fast, device, min_run_time, ROUNDS)}
    for row in rows:
        name = row["method"]
        if name in results:
            row["seconds"] = results[name]
            if measure_memory:
                row["peak_MiB"] = peak_memory_bytes(methods[name], device) / 2**20
    return rows, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument("--only", choices=("mlp", "cnn"), default=None,
                        help="run only the MLP or only the CNN cases (results file ntk_<only>)")
    parser.add_argument("--contended", action="store_true",
                        help="time every case idle and with a competing 2-thread torch.mm job "
                             "(results file ntk_contended)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); on a CPU shared with other "
                             "jobs, 1 thread gives stable timings")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        cases = [("mlp", 8, 4, False), ("mlp", 8, 4, True), ("cnn-pool", 4, 2, False)]
        min_run_time = 0.01
    else:
        cases = [("mlp", n, o, m) for n in (64, 256, 1024) for o in (1, 10) for m in (False, True)]
        cases += [("cnn-pool", 64, o, m) for o in (1, 10) for m in (False, True)]
        cases += [("cnn-flatten", 64, o, False) for o in (1, 10)]
        min_run_time = 0.1
    if args.only:
        cases = [case for case in cases if case[0].startswith(args.only)]
    rows = []
    for case in cases:
        case_rows = run_case(*case, device=device, min_run_time=min_run_time,
                             conditions=("idle", "contended") if args.contended else ("idle",))
        for row in case_rows:
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
        rows += case_rows
    name = "ntk_quick" if args.quick else "ntk"
    if args.only:
        name += f"_{args.only}"
    if args.contended:
        name += "_contended"
    columns = ["case", "method", "seconds", "speedup_vs_this", "floor_GFLOP", "flop_floor",
               "byte_floor", "peak_MiB", "rel_error", "rel_error_f64_model", "note"]
    if args.contended:
        columns[1:1] = ["condition"]
        columns[-1:-1] = ["slowdown", "speedup_kept"]
    path = write_results(
        name, device, rows, columns,
        notes=("Full-mode empirical NTK (n·O × n·O) of float32 models; sparsenas accumulates in "
               "float64 (its default), sparsenas_f32 in float32. speedup_vs_this = method time / sparsenas time (>1: sparsenas faster). "
               "rel_error = max|Θ − Θ_ref| / max|Θ_ref| against a float64 torch.func reference "
               "(float32 models: includes the model's own float32 rounding, the same for every "
               "method); rel_error_f64_model: sparsenas on the float64 model vs that reference. "
               f"Calls slower than 2 s are timed by one call, the others by the best of {ROUNDS} "
               "medians in rounds that alternate the methods of a case. "
               "Masked: 90% unstructured masks on the hidden layers (masks= argument). "
               "flop_floor = (floor_GFLOP / GEMM rate) / seconds: floor_GFLOP counts the "
               "cheapest route the engine has per layer (Gram route (nT)²(d+1+pO²), per-example "
               "gradients 2nTOpd + (nO)²pd, masked block n²(nnz+pO²); 2 FLOPs per multiply-add, "
               "each symmetric pair of examples once; the contraction: 2(nO)²P), the GEMM rate "
               "is torch.mm of [2560, 256] by its transpose in the row's dtype, measured in the "
               "same run and condition (note). byte_floor = (kernel-matrix bytes / copy "
               "bandwidth) / seconds, the bandwidth from a copy_ of a kernel-sized float64 "
               "matrix (read + written bytes). Masked rows reach their floors less: the masked "
               "block's sparse arithmetic runs below the GEMM rate."
               + (" Contended: the same timings with a competing 2-thread torch.mm job on the "
                  "same cores; slowdown = contended / idle seconds; speedup_kept = the "
                  "contraction's slowdown / this row's (1: sparsenas slows exactly as much as "
                  "torch's own ops; > 1: less)." if args.contended else "")))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

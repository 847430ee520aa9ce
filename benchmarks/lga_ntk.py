"""NTKs of an architecture population: the engine (sparsenas.ntk.empirical_ntk) against
torch.func's Jacobian contraction on the same population.

The LGA study takes one sum-of-logits NTK per network and evaluation, on a class-balanced fit
batch stacked with a held-out batch, in eval mode. Both methods compute exactly that kernel for
every member of an :class:`ArchSpace` population (MLPs and CNNs, 1-D convolutions on MNIST-1D):

- engine: ``empirical_ntk(model, x, mode="sum_logits", dtype=torch.float64)``;
- torch.func: per-example gradients of the summed logits by ``vmap(jacrev)`` over the batch,
  contracted with ``einsum`` (float32 Jacobian, float64 contraction).

Each network's two kernels are compared (relative error max |Δ| / max |Θ|), then the whole
population is timed per method (the best of ``--repeats`` passes, after one warm-up pass).

Run from the repository root: ``python -m benchmarks.lga_ntk [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from benchmarks.harness import write_results
from sparsenas.data import load_dataset
from sparsenas.methods.lga.metrics import metric_batch
from sparsenas.models import build_arch, encode_arch
from sparsenas.ntk import empirical_ntk
from sparsenas.spaces.archs import ArchSpace


def engine_ntk(model: nn.Module, x: Tensor) -> Tensor:
    return empirical_ntk(model, x, mode="sum_logits", dtype=torch.float64)


def jacobian_contraction_ntk(model: nn.Module, x: Tensor) -> Tensor:
    """Per-example gradients of the summed logits by vmap(jacrev), contracted with einsum."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def summed_logits(p: dict[str, Tensor], example: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (example.unsqueeze(0),)).sum()

    jacobians = vmap(jacrev(summed_logits), (None, 0))(params, x)
    kernel = None
    for jacobian in jacobians.values():
        flat = jacobian.flatten(1).double()
        term = torch.einsum("nf,mf->nm", flat, flat)
        kernel = term if kernel is None else kernel + term
    return kernel


def time_population(method: Callable[[nn.Module, Tensor], Tensor], models: list[nn.Module],
                    x: Tensor, repeats: int) -> float:
    """Seconds for one pass over the population: the best of ``repeats`` after a warm-up."""
    for model in models[:2]:
        method(model, x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for model in models:
            method(model, x)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small population (smoke test)")
    parser.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits"])
    parser.add_argument("--population", type=int, default=None,
                        help="architectures (default 64, quick 12)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="examples per class in each of the fit and held-out batches "
                             "(default 10, quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (default 3)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    population = args.population or (12 if args.quick else 64)
    per_class = args.per_class or (4 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    device = torch.device(args.device)

    data = load_dataset(args.dataset, seed=0)
    batch = metric_batch(data, per_class=per_class, seed=0)
    x = torch.cat([batch.x_fit, batch.x_held]).to(device)
    archs = ArchSpace().population(population, seed=0)
    models = [build_arch(arch, data.input_shape, data.num_classes, seed=i).to(device).eval()
              for i, arch in enumerate(archs)]

    worst_error, worst_arch = 0.0, ""
    for arch, model in zip(archs, models):
        ours, reference = engine_ntk(model, x), jacobian_contraction_ntk(model, x)
        error = ((ours - reference).abs().max() / reference.abs().max()).item()
        if error > worst_error:
            worst_error, worst_arch = error, encode_arch(arch)
    engine_s = time_population(engine_ntk, models, x, repeats)
    func_s = time_population(jacobian_contraction_ntk, models, x, repeats)
    parameters = [sum(p.numel() for p in m.parameters()) for m in models]
    row = {"dataset": args.dataset, "population": population, "examples": len(x),
           "parameters_min": min(parameters), "parameters_max": max(parameters),
           "engine_s": engine_s, "torch_func_s": func_s, "speedup": func_s / engine_s,
           "max_rel_error": worst_error, "worst_arch": worst_arch,
           "threads": torch.get_num_threads()}
    for key, value in row.items():
        print(f"{key}: {value}")
    columns = list(row)
    path = write_results("lga_ntk", device, [row], columns,
                         notes="Sum-of-logits NTKs of an ArchSpace population on one fit + "
                               "held-out batch; seconds for the whole population.")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""DASS search steps on the masked ops against the same supernet written the plain PyTorch way.

    python -m benchmarks.dass_supernet [--quick] [--threads N] [--steps N]

The supernet's SparseConv2d / SparseLinear layers compute through sparsenas' masked ops (the
straight-through score mask while pruning, the fixed mask while fine-tuning). The plain way
replaces every layer's forward by ``F.conv2d(x, W * mask)`` / ``F.linear(x, W * mask)`` with the
same mask, whose autograd gives the same weight and score gradients. Correctness first: from one
supernet and batch, one bilevel step each way must give the same loss and the same updated
parameters. Then ``--steps`` consecutive first-order search steps (α on a validation batch, then
the phase's weights or scores) are timed each way, per phase.
"""

from __future__ import annotations

import argparse
import copy
import time
import types

import torch
import torch.nn.functional as F

from benchmarks.harness import write_results
from sparsenas.methods.dass import SearchSchedule, enter_phase
from sparsenas.models.darts import DartsSearchNetwork
from sparsenas.nn.scored import SparseConv2d, sparse_layers
from sparsenas.train.bilevel import BilevelStep

SETTINGS = {
    "digits": dict(input_shape=(1, 8, 8), C=8, layers=5, steps=4, batch=64),
    "cifar": dict(input_shape=(3, 32, 32), C=8, layers=5, steps=4, batch=32),
}
PHASE_EPOCH = {"prune": 1, "finetune": 2}  # in a 1 / 1 / 1 schedule


def _plain_forward(layer, x: torch.Tensor) -> torch.Tensor:
    mask = layer._forward_mask()
    weight = layer.weight if mask is None else layer.weight * mask
    if isinstance(layer, SparseConv2d):
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation,
                        layer.groups)
    return F.linear(x, weight, layer.bias)


def plain(model: DartsSearchNetwork) -> DartsSearchNetwork:
    """A copy of ``model`` whose sparse layers compute F.conv2d / F.linear on W * mask."""
    model = copy.deepcopy(model)
    for _, layer in sparse_layers(model):
        layer.forward = types.MethodType(_plain_forward, layer)
    return model


def _optimizers(step: BilevelStep, model) -> dict[str, torch.optim.Optimizer]:
    return {group: torch.optim.Adam(params, lr=3e-4) if group == "arch"
            else torch.optim.SGD(params, lr=0.025, momentum=0.9)
            for group, params in step.param_groups(model).items()}


def _batches(setting: dict, device: torch.device):
    generator = torch.Generator().manual_seed(1)
    shape = (setting["batch"], *setting["input_shape"])
    return [(torch.randn(shape, generator=generator).to(device),
             torch.randint(0, 10, (setting["batch"],), generator=generator).to(device))
            for _ in range(2)]


def _check_equal(masked, plain_model, batch, val_batch) -> None:
    results = []
    for model in (copy.deepcopy(masked), copy.deepcopy(plain_model)):
        step = BilevelStep()
        loss = step(model, batch, _optimizers(step, model), val_batch).loss
        results.append((loss, model))
    (loss_a, a), (loss_b, b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=name)


def _time_steps(model, batch, val_batch, steps: int, device: torch.device) -> float:
    """Seconds per search step, over ``steps`` steps after two warm-up steps."""
    step = BilevelStep()
    optimizers = _optimizers(step, model)
    for _ in range(2):
        step(model, batch, optimizers, val_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(model, batch, optimizers, val_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits only, 5 steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 20)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in ("digits",) if args.quick else ("digits", "cifar"):
        setting = SETTINGS[name]
        batch, val_batch = _batches(setting, device)
        for phase, epoch in PHASE_EPOCH.items():
            torch.manual_seed(0)
            masked = DartsSearchNetwork(setting["input_shape"], 10, C=setting["C"],
                                        layers=setting["layers"], steps=setting["steps"])
            masked.to(device)
            schedule = SearchSchedule(1, 1, 1, keep=0.05)
            enter_phase(masked, schedule, 1)
            enter_phase(masked, schedule, epoch)
            plain_model = plain(masked)
            _check_equal(masked, plain_model, batch, val_batch)
            masked_s = _time_steps(masked, batch, val_batch, steps, device)
            plain_s = _time_steps(plain_model, batch, val_batch, steps, device)
            rows.append({"input": name, "phase": phase, "batch": setting["batch"],
                         "sparse_layers": sum(1 for _ in sparse_layers(masked)),
                         "masked_ops_ms": 1e3 * masked_s, "plain_ms": 1e3 * plain_s,
                         "speedup": plain_s / masked_s})
            print(rows[-1], flush=True)
    notes = (f"DartsSearchNetwork supernets as listed in SETTINGS (kept fraction 0.05), one "
             f"first-order bilevel search step (α on a validation batch, then weights or scores; "
             f"SGD / Adam), mean of {steps} steps after 2 warm-up steps. speedup = plain / masked "
             f"ops (above 1: the masked ops are faster).")
    path = write_results("dass_supernet", device, rows,
                         ["input", "phase", "batch", "sparse_layers", "masked_ops_ms", "plain_ms",
                          "speedup"], notes)
    print(path.read_text())


if __name__ == "__main__":
    main()

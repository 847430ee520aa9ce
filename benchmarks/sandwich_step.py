"""One BigNAS sandwich step with the width variants of a step computed together (K candidates of
the K-candidate masked ops) against computing every child one after another.

    python -m benchmarks.sandwich_step [--quick] [--threads N]

Correctness first: from the same supernet and batch, both ways must give the same per-child losses
and the same updated weights. Then whole steps (forward, backward, optimiser step) are timed. Two
spaces: the full elastic space (random children share depths / kernels / resolution only by
chance, so little is batched) and a width-only space (every non-lead child runs in one batch).
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.harness import time_call, write_results
from sparsenas.models import ElasticNet
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.train.sandwich import SandwichStep

SETTINGS = {
    "digits": dict(input_shape=(1, 8, 8), stem_channels=16, stage_channels=(16, 32),
                   stage_depths=(2, 2), stage_strides=(1, 2), resolutions=(6, 8)),
    "cifar": dict(input_shape=(3, 32, 32), stem_channels=16, stage_channels=(16, 32, 64),
                  stage_depths=(2, 2, 2), stage_strides=(1, 2, 2), resolutions=(24, 32)),
}


def _spaces(model: ElasticNet, resolutions: tuple[int, ...]) -> dict[str, ElasticSpace]:
    full = ElasticSpace.for_model(model, resolutions)
    widths_only = ElasticSpace((max(resolutions),), [(d,) for d in model.stage_depths],
                               full.widths, (model.kernel_sizes[-1],))
    return {"full": full, "widths-only": widths_only}


def _check_equal(model, space, batch, num_random) -> None:
    results = []
    for batch_children in (True, False):
        candidate = copy.deepcopy(model)
        step = SandwichStep(space, seed=0, num_random=num_random, batch_children=batch_children)
        optimizer = torch.optim.SGD(candidate.parameters(), lr=0.1)
        results.append((step(candidate, batch, {"weights": optimizer}).loss, candidate))
    (loss_a, model_a), (loss_b, model_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-4, rtol=1e-4)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits only, 2 random children")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in ("digits",) if args.quick else ("digits", "cifar"):
        setting = dict(SETTINGS[name])
        resolutions = setting.pop("resolutions")
        torch.manual_seed(0)
        model = ElasticNet(num_classes=10, **setting).to(device)
        generator = torch.Generator().manual_seed(1)
        batch = (torch.randn(64, *setting["input_shape"], generator=generator).to(device),
                 torch.randint(0, 10, (64,), generator=generator).to(device))
        for space_name, space in _spaces(model, resolutions).items():
            for num_random in (2,) if args.quick else (2, 6):
                _check_equal(model, space, batch, num_random)
                times = {}
                for batch_children in (True, False):
                    trained = copy.deepcopy(model)
                    step = SandwichStep(space, seed=0, num_random=num_random,
                                        batch_children=batch_children)
                    optimizer = {"weights": torch.optim.SGD(trained.parameters(), lr=0.01)}

                    def one_step():
                        step.step_index = 0  # the same children every call
                        step(trained, batch, optimizer)

                    times[batch_children] = time_call(one_step, device, min_run_time=1.0)
                rows.append({"input": name, "space": space_name, "children": num_random + 2,
                             "together_ms": 1e3 * times[True],
                             "one_by_one_ms": 1e3 * times[False],
                             "speedup": times[False] / times[True]})
                print(rows[-1], flush=True)
    notes = ("Batch 64, SGD, ElasticNet supernets as listed in SETTINGS; one whole sandwich step "
             "(biggest + smallest + random children, in-place distillation). speedup = "
             "one-by-one / together.")
    path = write_results("sandwich_step", device, rows,
                         ["input", "space", "children", "together_ms", "one_by_one_ms",
                          "speedup"], notes)
    print(path.read_text())


if __name__ == "__main__":
    main()

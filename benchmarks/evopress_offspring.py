"""EvoPress offspring evaluated together (one forward through the K-candidate masked ops) against
one at a time (compressed weights swapped into the model, one forward, dense weights swapped
back, as reference implementations do).

    python -m benchmarks.evopress_offspring [--quick] [--threads N] [--pruner magnitude|sparsegpt]

Batched comes in two kernels: "masked" (one K-candidate masked op per layer: the shared weight with
K bit-packed masks) and "grouped" (one dense call per distinct level among the K per layer).
Correctness first: all runners' outputs for the same offspring must agree. Then one whole
generation (λ offspring, racing stages, KL fitness against cached dense outputs) is timed with
each runner on the small GPT (byte tokens) and on an MLP for 8x8 digits, and the ratio reported.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.harness import time_call, write_results
from sparsenas.methods.evopress.database import LevelDatabase
from sparsenas.methods.evopress.evaluate import BatchedCandidates, Fitness, SequentialCandidates
from sparsenas.methods.evopress.search import (EvolutionConfig, RacingStage, initial_state,
                                               offspring, run_generation)
from sparsenas.models.lm import GPT
from sparsenas.spaces.levels import SparsityLevelSpace, compressible_layers, layer_numels


def _cases(quick: bool):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                        nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    yield "mlp-digits", mlp, torch.randn(256, 1, 8, 8, generator=generator)
    gpt = GPT(context=64, width=64, depth=2, heads=4).eval()
    yield "gpt-2x64", gpt, torch.randint(256, (64 if quick else 128, 64), generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="λ = 16 only, smaller stages")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--pruner", default="magnitude", choices=["magnitude", "sparsegpt"])
    parser.add_argument("--no-write", action="store_true", help="print the rows only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, model, inputs in _cases(args.quick):
            layers = compressible_layers(model)
            space = SparsityLevelSpace(list(layers), layer_numels(layers), 0.6, num_levels=4)
            db = LevelDatabase.build(Path(directory) / f"{name}.safetensors", model, space,
                                     [inputs[:32]], pruner=args.pruner)
            runners = {"masked": BatchedCandidates(model, space, db, "masked"),
                       "grouped": BatchedCandidates(model, space, db, "grouped"),
                       "one_at_a_time": SequentialCandidates(model, space, db)}
            children = offspring(space, space.start, 8, seed=1)
            expected = runners["one_at_a_time"](children, inputs[:4])
            for runner in runners.values():
                torch.testing.assert_close(runner(children, inputs[:4]), expected, atol=1e-4,
                                           rtol=1e-4)
            small = len(inputs) // 8
            for lam in (16,) if args.quick else (16, 64):
                config = EvolutionConfig(lam, (RacingStage(8, small), RacingStage(2, small * 2),
                                               RacingStage(1, len(inputs))), seed=0)
                times = {}
                for label, runner in runners.items():
                    fitness = Fitness(runner, inputs, batch_size=small)
                    state = initial_state(space)
                    fitness([space.start], torch.arange(len(inputs)))  # dense outputs cached
                    times[label] = time_call(
                        lambda: run_generation(state, space, config, fitness, len(inputs)),
                        device, min_run_time=0.5 if args.quick else 2.0)
                rows.append({"model": name, "pruner": args.pruner, "offspring": lam,
                             "stages": str([(s.survivors, s.examples) for s in config.stages]),
                             **{f"{label}_s": t for label, t in times.items()},
                             "masked_speedup": times["one_at_a_time"] / times["masked"],
                             "grouped_speedup": times["one_at_a_time"] / times["grouped"]})
                print(rows[-1], flush=True)
    if not args.no_write:
        print(write_results("evopress_offspring", device, rows,
                            ["model", "pruner", "offspring", "stages", "masked_s", "grouped_s",
                             "one_at_a_time_s", "masked_speedup", "grouped_speedup"],
                            notes="One EvoPress generation (KL fitness, dense outputs cached)."))


if __name__ == "__main__":
    main()

"""Training one BigNAS supernet data-parallel with torch.distributed DDP, started by torchrun:

    torchrun --nproc_per_node 2 -m sparsenas.methods.bignas.ddp --checkpoint-dir DIR \\
        [--variant bignas] [--seed 0] [--end-epoch E] [--preset quick] [any bignas option]

``--batch-size`` is the global batch: every rank draws the same shuffled batches and computes its
contiguous shard of each (gloo on CPU; NCCL with one GPU per rank on CUDA). DDP averages the
gradients, each rank's loss weighted by its shard's share of the batch, so the update is the
gradient of the global batch's mean loss, except that BatchNorm normalises each shard with its own
statistics (as in any data-parallel training without synchronised BatchNorm). Rank 0 writes an
atomic checkpoint after every epoch (weights, optimiser, scheduler, step counter; the study's
format); running the same command again resumes after the last one. Without torchrun the same
training runs in one process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sparsenas.methods.bignas.training import (VARIANTS, checkpoint_path, load_epoch, save_epoch,
                                                train_epoch)
from sparsenas.models.elastic import ElasticNet
from sparsenas.seeds import derive_seed
from sparsenas.spaces.elastic import ElasticSpace
from sparsenas.train.sandwich import SandwichStep


def shard_bounds(size: int, world: int) -> list[tuple[int, int]]:
    """[start, end) of each rank's contiguous shard of a batch of ``size``."""
    base, extra = divmod(size, world)
    bounds, start = [], 0
    for rank in range(world):
        end = start + base + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


class _StepObjective(nn.Module):
    """The supernet with the step's objective as its forward, so DDP sees one forward and one
    backward per optimisation step."""

    def __init__(self, model: ElasticNet, step: SandwichStep) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        children = self.step.children(self.model, self.step.step_index)
        return self.step.objective(self.model, x, y, children)


class DistributedSandwichStep(SandwichStep):
    """A SandwichStep whose batch is the global batch: this rank computes its shard through DDP
    and the reported losses and logits are those of the whole batch."""

    def __init__(self, *args, device: torch.device, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.ddp: DistributedDataParallel | None = None

    def batch_objective(self, model: ElasticNet,
                        batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if self.ddp is None or self.ddp.module.model is not model:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # Only the biggest child uses every parameter; uniform steps may leave some unused.
            self.ddp = DistributedDataParallel(_StepObjective(model, self),
                                               device_ids=device_ids,
                                               find_unused_parameters=self.rule != "sandwich")
        x, y = batch
        bounds = shard_bounds(len(x), self.world)
        start, end = bounds[self.rank]
        total, losses, logits = self.ddp(x[start:end], y[start:end])
        share = (end - start) / len(x)
        losses = losses * share
        dist.all_reduce(losses)
        longest = max(e - s for s, e in bounds)
        padded = logits.new_zeros(logits.shape[0], longest, logits.shape[2])
        padded[:, :end - start] = logits
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded)
        logits = torch.cat([g[:, :e - s] for g, (s, e) in zip(gathered, bounds)], dim=1)
        return total * share * self.world, losses, logits


def _parser() -> argparse.ArgumentParser:
    from sparsenas.cli import add_config_arguments
    from sparsenas.strategies.bignas import BigNAS

    parser = argparse.ArgumentParser(prog="python -m sparsenas.methods.bignas.ddp",
                                     description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, BigNAS.Config, "bignas")
    run = parser.add_argument_group("distributed run")
    run.add_argument("--checkpoint-dir", type=Path, required=True,
                     help="per-epoch checkpoints; an existing one is resumed from")
    run.add_argument("--variant", default="bignas", choices=tuple(VARIANTS))
    run.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    run.add_argument("--end-epoch", type=int, default=None,
                     help="stop after this epoch (rerun to continue)")
    run.add_argument("--preset", default=None, help="start from a bignas preset")
    return parser


def _check_shards(num_examples: int, batch_size: int, world: int) -> None:
    sizes = {min(batch_size, num_examples)}
    if num_examples % batch_size >= 2:
        sizes.add(num_examples % batch_size)
    if min(sizes) // world < 2:
        raise ValueError(f"a batch of {min(sizes)} examples leaves a rank fewer than 2 (BatchNorm) "
                         f"with {world} processes: change --batch-size")


def train(argv: list[str] | None = None) -> int:
    from sparsenas.cli import strategy_config
    from sparsenas.strategies.bignas import BigNAS

    args = _parser().parse_args(argv)
    config = strategy_config(BigNAS, args)
    distributed = "WORLD_SIZE" in os.environ
    cuda = torch.cuda.is_available() and config.runtime.device != "cpu"
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(config.runtime.threads)
    try:
        c = config
        data = c.data.load()
        _check_shards(len(data.x_train), c.training.batch_size, world)
        model = c.supernet.build(data, args.seed)
        space = ElasticSpace.for_model(model, c.supernet.resolutions,
                                       c.supernet.width_multipliers)
        step = (c.sandwich.step(args.variant, space, c.training, args.seed,
                                DistributedSandwichStep, device=device) if distributed
                else c.sandwich.step(args.variant, space, c.training, args.seed))
        end_epoch = args.end_epoch or c.training.epochs
        done = [e for e in range(1, c.training.epochs + 1)
                if checkpoint_path(args.checkpoint_dir, args.variant, args.seed, e).is_file()]
        state = None
        if done:
            state = load_epoch(checkpoint_path(args.checkpoint_dir, args.variant, args.seed,
                                               done[-1]), model, step)
        for epoch in range((done[-1] if done else 0) + 1, end_epoch + 1):
            result = train_epoch(model, step, data, c.training, derive_seed("batches", args.seed),
                                 epoch, state, device=device)
            state = result.state
            if rank == 0:
                save_epoch(checkpoint_path(args.checkpoint_dir, args.variant, args.seed, epoch),
                           model, step, result, args.variant)
                metrics = result.history[0]
                print(f"epoch {epoch}: lr {metrics.lr:.4g}, lead train loss "
                      f"{metrics.train_loss[0]:.4f}, biggest child val acc "
                      f"{metrics.val_acc[0]:.4f} ({world} process(es))", flush=True)
            if distributed:
                dist.barrier()
    except (ValueError, OSError) as error:
        print(f"sparsenas ddp: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(train())

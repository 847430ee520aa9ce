"""Scoring and training node-mask candidates, shared by the strategies that search node spaces:
scores from a short training run of all candidates together (validation accuracy, ties to the
lower validation loss) or from any registered zero-cost proxy on one seeded batch; full training
of finalists together from the parent's θ0."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig
from sparsenas.models import CandidateBatch, NodeMaskedNet, ParentConfig
from sparsenas.proxies import PROXIES
from sparsenas.spaces.node import NodeCandidate, stack_candidates
from sparsenas.store import TrialRecord
from sparsenas.study.runtime import RuntimeConfig
from sparsenas.study.study import StudyContext
from sparsenas.train import TrainConfig, Trainer, TrainResult


@dataclass(frozen=True)
class ScoringConfig(ConfigPiece):
    """How candidates are scored during a search (a config piece)."""

    proxy: str | None = option(None, "score candidates with this registered proxy instead of a "
                                     "short training run")
    search_epochs: int = option(3, "epochs of the short training that scores candidates")
    proxy_batch_size: int = option(256, "examples the proxy sees")

    def validate(self) -> None:
        if self.proxy is not None:
            PROXIES.get(self.proxy)
        if self.search_epochs < 1 or self.proxy_batch_size < 2:
            raise ValueError(f"search_epochs must be >= 1 and proxy_batch_size >= 2, got "
                             f"{self.search_epochs} and {self.proxy_batch_size}")


@dataclass(frozen=True)
class NodeSearchConfig(ConfigPiece):
    """The pieces every node-mask search composes: data, parent, candidate scoring, full
    training (20 epochs by default) and runtime. Strategies subclass it and add their options."""

    data: DataConfig = DataConfig()
    parent: ParentConfig = ParentConfig()
    scoring: ScoringConfig = ScoringConfig()
    training: TrainConfig = TrainConfig(epochs=20)
    runtime: RuntimeConfig = RuntimeConfig()


@dataclass
class Scores:
    """Per candidate: ``final`` (score, tiebreak and, after training, the final metrics),
    ``epochs`` (per-epoch metrics of the short training, empty for a proxy); ``seconds`` per
    candidate."""

    final: list[dict]
    epochs: list[list[dict]]
    seconds: float


def score_candidates(parent: NodeMaskedNet, candidates: list[NodeCandidate], scoring: ScoringConfig,
                     training: TrainConfig, ctx: StudyContext, seed: int) -> Scores:
    """Scores ``candidates`` of ``parent`` (all starting from its weights θ0); ``seed`` keys the
    batch order of the short training, or the proxy batch."""
    start = time.perf_counter()
    if scoring.proxy is None:
        trainer = Trainer(dataclasses.replace(training, epochs=scoring.search_epochs), ctx.hooks,
                          device=ctx.device)
        result = trainer.fit(CandidateBatch(parent, stack_candidates(candidates)), ctx.data,
                             seed=seed)
        final = [{"score": result.history[-1].val_acc[i],
                  "tiebreak": -result.history[-1].val_loss[i], **result.candidate_final(i)}
                 for i in range(len(candidates))]
        epochs = [result.candidate_history(i) for i in range(len(candidates))]
    else:
        proxy = PROXIES.get(scoring.proxy)
        data = ctx.data
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(data.x_train), generator=generator)[:scoring.proxy_batch_size]
        x, y = data.x_train[index].to(ctx.device), data.y_train[index].to(ctx.device)
        final = []
        for candidate in candidates:
            network = copy.deepcopy(parent).to(ctx.device)
            network.set_candidate(candidate)
            final.append({"score": float(proxy(network, x, y)), "tiebreak": 0.0})
        epochs = [[] for _ in candidates]
    return Scores(final, epochs, (time.perf_counter() - start) / len(candidates))


def best_trial(trials):
    """The highest score; ties go to the higher tiebreak (lower validation loss), then to the
    earlier trial key."""
    if not trials:
        raise ValueError("best_trial(): no trials")
    ordered = sorted(trials, key=lambda t: t.key)
    return max(ordered, key=lambda t: (t.final["score"], t.final["tiebreak"]))



def train_candidates(parent: NodeMaskedNet, candidates: list[NodeCandidate], training: TrainConfig,
                     ctx: StudyContext, seed: int) -> tuple[CandidateBatch, TrainResult]:
    """Trains ``candidates`` of ``parent`` fully, together, from its weights θ0 (batch order
    from ``seed``)."""
    batch = CandidateBatch(parent, stack_candidates(candidates))
    result = Trainer(training, ctx.hooks, device=ctx.device).fit(batch, ctx.data, seed=seed)
    return batch, result


def trained_trials(roles: list[tuple[str, dict]], result: TrainResult, seed: int,
                   parents: list[str | None] | None = None) -> list[TrialRecord]:
    """One "final" trial per (key, config) role, in the order the candidates were trained."""
    parents = parents or [None] * len(roles)
    return [TrialRecord(key=key, kind="final", seed=seed, config=config, parent=parents[i],
                        epochs=result.candidate_history(i), final=result.candidate_final(i),
                        seconds=result.seconds / len(roles))
            for i, (key, config) in enumerate(roles)]

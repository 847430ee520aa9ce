"""Random search over node masks, and the study around it (SPEC §1.1).

Per seed, the parent's shared initialisation θ0 is drawn once. For every sparsity s of the grid,
N candidate masks are sampled and scored (a short training run, or a registered zero-cost proxy)
and the best is kept. Then the seed's finalists are trained fully together from θ0: the search's
best mask and K random masks at every s, and the dense parent. The store receives every trial;
the summary compares search-selected with random masks and with the dense parent.

Work is split into units with deterministic keys (``seed=<i>/s=<s>/search`` and
``seed=<i>/final``); each unit's candidates are trained together as one
:class:`~sparsenas.models.CandidateBatch` and committed atomically, so an interrupted study
resumes at the first unfinished unit with identical results.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsenas.data import Dataset, load_dataset
from sparsenas.models import CandidateBatch, NodeMaskedNet, create_model
from sparsenas.proxies import get_proxy
from sparsenas.search.space import BUDGETS, NodeSpace
from sparsenas.seeds import derive_seed
from sparsenas.store import Store, TrialRecord, save_checkpoint
from sparsenas.train import EpochMetrics, TrainConfig, Trainer, TrainerHook


@dataclass(frozen=True)
class RandomSearchConfig:
    dataset: str = "digits"
    data_root: str | None = None
    data_seed: int = 0
    model: str = "mlp"
    widths: tuple[int, ...] = (128, 128)
    sparsities: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
    budget: str = "layer"
    num_candidates: int = 16
    num_random: int = 8
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    proxy: str | None = None
    search_epochs: int = 3
    proxy_batch_size: int = 256
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    patience: int | None = None
    device: str = "auto"
    amp: bool = False

    # Options that change where or how fast a study runs, not its results' identity.
    RUNTIME_FIELDS = ("data_root", "device")

    def __post_init__(self) -> None:
        for s in self.sparsities:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {s}")
        if not self.sparsities:
            raise ValueError("at least one sparsity is needed")
        if self.num_candidates < 1 or self.num_random < 1 or self.search_epochs < 1:
            raise ValueError("num_candidates, num_random and search_epochs must be >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive, got {self.widths}")
        self.train_config()  # validates the training options

    def identity(self) -> dict:
        """The options that define the study's results (what a resumed run must match)."""
        values = asdict(self)
        for name in self.RUNTIME_FIELDS:
            values.pop(name)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs or self.epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, momentum=self.momentum,
                           weight_decay=self.weight_decay, schedule=self.schedule,
                           patience=self.patience, device=self.device, amp=self.amp)


@dataclass(frozen=True)
class Unit:
    key: str
    kind: str  # "search" or "final"
    seed: int
    sparsity: float | None = None
    depends_on: tuple[str, ...] = field(default_factory=tuple)


def _s(sparsity: float) -> str:
    return f"{sparsity:g}"


def plan_units(config: RandomSearchConfig) -> list[Unit]:
    """The study's units in execution order: per seed, one search unit per sparsity, then the
    seed's final training unit, which needs them."""
    units = []
    for seed in config.seeds:
        search = [Unit(f"seed={seed}/s={_s(s)}/search", "search", seed, s)
                  for s in config.sparsities]
        units += search
        units.append(Unit(f"seed={seed}/final", "final", seed,
                          depends_on=tuple(u.key for u in search)))
    return units


class _EpochProgress(TrainerHook):
    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def on_train_start(self, trainer: Trainer, model: torch.nn.Module) -> None:
        self.bar.reset(total=trainer.config.epochs)

    def on_epoch_end(self, trainer: Trainer, model: torch.nn.Module,
                     metrics: EpochMetrics) -> None:
        self.bar.set_postfix(val_acc=f"{max(metrics.val_acc):.3f}", refresh=False)
        self.bar.update(1)


class RandomSearchStudy:
    def __init__(self, config: RandomSearchConfig, store: Store, progress: bool | None = None,
                 poll_seconds: float = 0.5, data: Dataset | None = None,
                 checkpoint_dir: str | Path | None = None) -> None:
        """``data``: the study's dataset if already loaded (else loaded on first use);
        ``progress``: tqdm bars on (True), off (False) or only on a terminal (None);
        ``checkpoint_dir``: where to save the fully trained search-selected and dense networks
        (safetensors, one file per trial key), if anywhere."""
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.config = config
        self.store = store
        self.progress = progress
        self.poll_seconds = poll_seconds
        self._data = data

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_dataset(self.config.dataset, self.config.data_root,
                                      seed=self.config.data_seed)
        return self._data

    def parent(self, seed: int) -> NodeMaskedNet:
        """The parent with this seed's shared initialisation θ0 (drawn on the CPU, so θ0 is the
        same on every device)."""
        c = self.config
        width_option = "hidden" if c.model == "mlp" else "channels"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("init", seed))
            model = create_model(c.model, input_shape=self.data.input_shape,
                                 num_classes=self.data.num_classes,
                                 **{width_option: tuple(c.widths)})
        if not isinstance(model, NodeMaskedNet):
            raise ValueError(f"model {c.model!r} has no node space")
        return model

    def run(self) -> None:
        """Runs (or resumes) every unfinished unit; returns when all are finished, whichever
        worker finished them."""
        self.store.init_study(self.config.identity())
        units = plan_units(self.config)
        disable = None if self.progress is None else not self.progress
        with tqdm(total=len(units), desc="units", unit="unit", disable=disable) as unit_bar, \
                tqdm(total=self.config.epochs, desc="epochs", unit="epoch", leave=False,
                     disable=disable) as epoch_bar:
            hooks = [_EpochProgress(epoch_bar)]
            while True:
                finished = self.store.finished_units()
                unit_bar.n = sum(u.key in finished for u in units)
                unit_bar.refresh()
                pending = [u for u in units if u.key not in finished]
                if not pending:
                    return
                ready = [u for u in pending if all(d in finished for d in u.depends_on)]
                claimed = next((u for u in ready if self.store.claim(u.key)), None)
                if claimed is None:  # everything left is in other workers' hands
                    time.sleep(self.poll_seconds)
                    continue
                unit_bar.set_description(claimed.key)
                try:
                    trials = self._run_unit(claimed, hooks)
                except BaseException:
                    self.store.release(claimed.key)
                    raise
                self.store.finish(claimed.key, trials)

    def _run_unit(self, unit: Unit, hooks: Sequence[TrainerHook]) -> list[TrialRecord]:
        if unit.kind == "search":
            return self._search(unit, hooks)
        return self._final(unit, hooks)

    def _search(self, unit: Unit, hooks: Sequence[TrainerHook]) -> list[TrialRecord]:
        c = self.config
        parent = self.parent(unit.seed)
        space = NodeSpace(parent.layer_sizes, unit.sparsity, c.budget)
        masks = space.sample(c.num_candidates, derive_seed("search", unit.seed, unit.sparsity))
        start = time.perf_counter()
        if c.proxy is None:
            trainer = Trainer(c.train_config(c.search_epochs), hooks)
            result = trainer.fit(CandidateBatch(parent, masks), self.data,
                                 seed=derive_seed("search-batches", unit.seed, unit.sparsity))
            scores = [{"score": result.history[-1].val_acc[i],
                       "tiebreak": -result.history[-1].val_loss[i], **result.candidate_final(i)}
                      for i in range(c.num_candidates)]
            histories = [result.candidate_history(i) for i in range(c.num_candidates)]
        else:
            scores = self._proxy_scores(parent, masks, unit.seed)
            histories = [[] for _ in scores]
        seconds = (time.perf_counter() - start) / c.num_candidates
        return [TrialRecord(
            key=f"{unit.key}/{i:04d}", kind="search", seed=unit.seed,
            config={"sparsity": unit.sparsity, "role": "candidate", "index": i,
                    "mask": space.encode([m[i] for m in masks]),
                    "kept": [int(m[i].sum()) for m in masks]},
            epochs=histories[i], final=scores[i], seconds=seconds)
            for i in range(c.num_candidates)]

    def _proxy_scores(self, parent: NodeMaskedNet, masks: list[torch.Tensor],
                      seed: int) -> list[dict]:
        proxy: Callable = get_proxy(self.config.proxy)
        device = Trainer(self.config.train_config()).device
        data = self.data
        generator = torch.Generator().manual_seed(derive_seed("proxy-batch", seed))
        index = torch.randperm(len(data.x_train), generator=generator)[
            :self.config.proxy_batch_size]
        x, y = data.x_train[index].to(device), data.y_train[index].to(device)
        scores = []
        for i in range(masks[0].shape[0]):
            candidate = copy.deepcopy(parent).to(device)
            candidate.set_candidate([m[i] for m in masks])
            score = float(proxy(candidate, x, y))
            scores.append({"score": score, "tiebreak": 0.0})
        return scores

    def _best_search_mask(self, seed: int, sparsity: float) -> tuple[str, dict]:
        trials = self.store.trials(kind="search", unit=f"seed={seed}/s={_s(sparsity)}/search")
        if not trials:
            raise RuntimeError(f"no search trials for seed {seed}, sparsity {sparsity}")
        # Highest score; ties go to the lower validation loss, then to the lower index.
        best = max(trials, key=lambda t: (t.final["score"], t.final["tiebreak"],
                                          -t.config["index"]))
        return best.config["mask"], best.final

    def _final(self, unit: Unit, hooks: Sequence[TrainerHook]) -> list[TrialRecord]:
        c = self.config
        parent = self.parent(unit.seed)
        roles: list[tuple[str, dict]] = []  # (trial key, trial config) per candidate
        layer_masks: list[list[torch.Tensor]] = []  # per candidate: bool [n_l] per layer
        for s in c.sparsities:
            space = NodeSpace(parent.layer_sizes, s, c.budget)
            encoded, search_final = self._best_search_mask(unit.seed, s)
            best = space.decode(encoded)
            roles.append((f"seed={unit.seed}/s={_s(s)}/search-best",
                          {"sparsity": s, "role": "search", "index": 0, "mask": encoded,
                           "kept": [int(m.sum()) for m in best],
                           "search_score": search_final["score"]}))
            layer_masks.append(best)
            randoms = space.sample(c.num_random, derive_seed("random", unit.seed, s))
            for i in range(c.num_random):
                candidate = [m[i] for m in randoms]
                roles.append((f"seed={unit.seed}/s={_s(s)}/random/{i:04d}",
                              {"sparsity": s, "role": "random", "index": i,
                               "mask": space.encode(candidate),
                               "kept": [int(m.sum()) for m in candidate]}))
                layer_masks.append(candidate)
        roles.append((f"seed={unit.seed}/dense", {"sparsity": 0.0, "role": "dense", "index": 0,
                                                  "mask": None, "kept": parent.layer_sizes}))
        layer_masks.append([torch.ones(n, dtype=torch.bool) for n in parent.layer_sizes])
        stacked = [torch.stack(per_layer) for per_layer in zip(*layer_masks)]
        trainer = Trainer(c.train_config(), hooks)
        batch = CandidateBatch(parent, stacked)
        result = trainer.fit(batch, self.data, seed=derive_seed("final-batches", unit.seed))
        seconds = result.seconds / len(roles)
        if self.checkpoint_dir is not None:
            for i, (key, config) in enumerate(roles):
                if config["role"] in ("search", "dense"):
                    save_checkpoint(self.checkpoint_dir / f"{key.replace('/', '_')}.safetensors",
                                    batch.candidate_state_dict(i),
                                    {"trial": key, "config": json.dumps(config),
                                     "study": json.dumps(c.identity())})
        return [TrialRecord(key=key, kind="final", seed=unit.seed, config=config,
                            epochs=result.candidate_history(i), final=result.candidate_final(i),
                            seconds=seconds)
                for i, (key, config) in enumerate(roles)]

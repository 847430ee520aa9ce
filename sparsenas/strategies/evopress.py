"""EvoPress: (1+λ) evolution with racing selection over per-layer compression levels at an exactly
kept global budget (unstructured sparsity, dropped blocks, or bit-width), against the uniform,
OWL, best-of-random and block-importance baselines at the same budget.

Units (all on one chain, so the study runs them in order):

- ``dense``: the dense model trained (mlp / cnn through the Trainer, the small GPT through
  :func:`sparsenas.models.lm.train_language_model`), saved as safetensors in the study's work
  directory, and the level database built there (sparsity and bit-width modes; depth needs none).
  A database that already exists at that path is reused only if it was built for this model and
  mode (else a one-line error, and the file is left as it is).
- ``generation=0001`` … : one (1+λ) generation each, from the state the previous one stored
  (parent configuration, offspring, every racing stage's candidates, examples drawn and fitness,
  the RNG keys); a generation's randomness derives from (seed, generation) only, so a study
  killed at any point resumes at the last finished generation and ends as an uninterrupted run.
- ``final``: the baselines at the same budget and every configuration's held-out evaluation:
  KL(dense ‖ compressed) on the test split, and test accuracy (classifiers) or perplexity (LM).

The work directory is ``ctx.checkpoint_dir`` when the study has one (``--save-models``), else
``<store directory>/<store file stem>.<study>.evopress/`` beside the store; ``--database PATH``
puts (or finds) the database elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig, Dataset
from sparsenas.methods.evopress import baselines
from sparsenas.methods.evopress.database import PRUNERS, LevelDatabase
from sparsenas.methods.evopress.evaluate import BatchedCandidates, Fitness, SequentialCandidates
from sparsenas.methods.evopress.search import (EvolutionConfig, Generation, RacingStage,
                                               generation_seeds, initial_state, run_generation)
from sparsenas.models import create_model
from sparsenas.models.lm import train_language_model
from sparsenas.report.io import save_figure
from sparsenas.seeds import derive_seed
from sparsenas.spaces.levels import (BIT_OPTIONS, BitWidthSpace, DepthSpace, LevelSpace,
                                     SparsityLevelSpace, compressible_layers, layer_numels,
                                     residual_blocks)
from sparsenas.store import TrialRecord, load_checkpoint, save_checkpoint
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.study import RuntimeConfig, StudyContext, Unit
from sparsenas.train import TrainConfig, Trainer

MODES = ("sparsity", "depth", "bits")
MODEL_NAMES = ("gpt", "mlp", "cnn", "vit")
TRANSFORMERS = ("gpt", "vit")
KERNELS = ("masked", "grouped", "sequential")
LM_DATASET = "stdlib_text"


@dataclass(frozen=True)
class EvoPressConfig(ConfigPiece):
    data: DataConfig = DataConfig(dataset=LM_DATASET)
    training: TrainConfig = TrainConfig(epochs=20)
    runtime: RuntimeConfig = RuntimeConfig()
    mode: str = option("sparsity", "what is compressed: per-layer unstructured sparsity, "
                                   "dropped residual blocks, or per-layer bit-width",
                       choices=MODES)
    target: float = option(0.5, "the global budget: average sparsity of the compressible layers "
                                "(sparsity), number of dropped blocks (depth), or average bits "
                                f"(bits: one of {', '.join(map(str, BIT_OPTIONS))})")
    pruner: str = option("magnitude", "how a layer's level is built (sparsity mode)",
                         choices=PRUNERS)
    model: str = option("gpt", "gpt (byte-level LM on stdlib_text), or mlp / cnn / vit "
                               "(classifiers on an image dataset)", choices=MODEL_NAMES)
    widths: tuple[int, ...] = option((64, 64), "mlp / cnn hidden widths")
    embed_width: int = option(64, "gpt / vit embedding width")
    blocks: int = option(4, "gpt / vit residual blocks")
    heads: int = option(4, "gpt / vit attention heads")
    lm_steps: int = option(1500, "gpt training steps (AdamW, cosine schedule)")
    lm_batch_size: int = option(32, "gpt training batch size")
    lm_lr: float = option(3e-3, "gpt learning rate")
    num_levels: int = option(4, "sparsity levels each way from the target (2L + 1 per layer)")
    group_size: int = option(32, "quantisation group size (bits mode)")
    offspring: int = option(16, "offspring per generation (λ)")
    generations: int = option(30, "generations of (1+λ) evolution")
    stage_survivors: tuple[int, ...] = option((8, 2, 1), "racing: survivors of each stage "
                                                         "(the last keeps 1)")
    stage_examples: tuple[int, ...] = option((16, 64, 256), "racing: fresh calibration examples "
                                                            "each stage draws")
    calibration: int = option(256, "calibration pool (train split examples): racing samples, "
                                   "the database's and OWL's activations")
    eval_examples: int = option(256, "test split examples of the final evaluation")
    fitness: str = option("kl", "search fitness: KL(dense || compressed) or cross-entropy",
                          choices=("kl", "loss"))
    kernel: str = option("masked", "how offspring are evaluated: together through the "
                                   "K-candidate masked ops (masked), one dense call per "
                                   "distinct level (grouped), or one after another (sequential)",
                         choices=KERNELS)
    random_count: int = option(16, "random configurations the best-of-random baseline draws")
    owl_lambda: float = option(0.08, "OWL: spread of layer sparsities around the target")
    owl_threshold: float = option(5.0, "OWL: outlier threshold (times the layer's mean score)")
    seed: int = option(0, "study seed (model initialisation, calibration pool, search)")
    database: str | None = option(None, "the level database file (default: database.safetensors "
                                        "in the study's work directory beside the store)",
                                  runtime=True)

    def validate(self) -> None:
        if min(self.offspring, self.generations, self.calibration, self.eval_examples,
               self.random_count, self.num_levels, self.group_size, self.lm_steps,
               self.lm_batch_size) < 1:
            raise ValueError("offspring, generations, calibration, eval_examples, random_count, "
                             "num_levels, group_size, lm_steps and lm_batch_size must be >= 1")
        if len(self.stage_survivors) != len(self.stage_examples):
            raise ValueError(f"stage_survivors and stage_examples need one entry per stage, got "
                             f"{len(self.stage_survivors)} and {len(self.stage_examples)}")
        if self.calibration < self.stage_examples[0]:
            raise ValueError(f"calibration ({self.calibration} examples) is smaller than the "
                             f"first racing stage ({self.stage_examples[0]} examples)")
        self.evolution.check_pool(self.calibration)  # also checks the stages against offspring
        if not 0.0 <= self.owl_lambda < 1.0 or self.owl_threshold <= 0:
            raise ValueError(f"owl_lambda must be in [0, 1) and owl_threshold > 0, got "
                             f"{self.owl_lambda} and {self.owl_threshold}")
        if (self.model == "gpt") != (self.data.dataset == LM_DATASET):
            raise ValueError(f"model {self.model!r} does not fit dataset {self.data.dataset!r}: "
                             f"the gpt takes {LM_DATASET}, mlp / cnn take image datasets")
        if self.mode == "depth" and self.model not in TRANSFORMERS:
            raise ValueError(f"mode depth needs residual blocks, which model {self.model!r} has "
                             f"none of; use --model gpt or vit")
        if self.mode in ("depth", "bits") and self.target != round(self.target):
            raise ValueError(f"target must be a whole number in mode {self.mode}, got "
                             f"{self.target}")
        if self.mode == "bits" and int(self.target) not in BIT_OPTIONS:
            raise ValueError(f"target {self.target:g} average bits is outside what the levels "
                             f"can reach: one of {', '.join(map(str, BIT_OPTIONS))}")
        if self.mode == "sparsity" and not 0.0 < self.target < 1.0:
            raise ValueError(f"target {self.target:g} is outside what the sparsity levels can "
                             f"reach: an average sparsity in (0, 1)")
        if self.database is not None and self.mode != "depth":
            _check_database_mode(Path(self.database), self.mode)

    @property
    def evolution(self) -> EvolutionConfig:
        return EvolutionConfig(self.offspring, tuple(RacingStage(s, e) for s, e in
                                                     zip(self.stage_survivors,
                                                         self.stage_examples)),
                               derive_seed("evopress-search", self.seed))

    def build_model(self, shapes: tuple[tuple[int, ...], int]) -> nn.Module:
        """The untrained model for data of (input shape, classes), initialised from the seed."""
        input_shape, num_classes = shapes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("evopress-init", self.seed))
            if self.model == "gpt":
                model = create_model("gpt", vocab_size=num_classes, context=input_shape[0],
                                     width=self.embed_width, depth=self.blocks,
                                     heads=self.heads)
            elif self.model == "vit":
                model = create_model("vit", input_shape=input_shape, num_classes=num_classes,
                                     embed_dim=self.embed_width, depth=self.blocks,
                                     num_heads=self.heads)
            else:
                model = create_model(self.model, input_shape=input_shape,
                                     num_classes=num_classes, widths=tuple(self.widths))
        return model.eval()

    def space(self, model: nn.Module) -> LevelSpace:
        """The level space of ``model`` at the target; an unreachable target is a ValueError."""
        try:
            if self.mode == "depth":
                return DepthSpace(list(residual_blocks(model)), int(self.target))
            layers = compressible_layers(model)
            if self.mode == "bits":
                return BitWidthSpace(list(layers), layer_numels(layers), int(self.target))
            return SparsityLevelSpace(list(layers), layer_numels(layers), self.target,
                                      self.num_levels)
        except ValueError as error:
            raise ValueError(f"target {self.target:g} ({self.mode}) on model {self.model!r}: "
                             f"{error}") from None


def _check_database_mode(path: Path, mode: str) -> None:
    """A database file given with --database that was built for another mode is refused before
    any work (its model is checked once the dense model exists)."""
    if not path.exists():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            built_for = (handle.metadata() or {}).get("mode")
    except Exception:
        raise ValueError(f"database {str(path)!r} is not a level database") from None
    if built_for != mode:
        raise ValueError(f"database {str(path)!r} was built for mode {built_for!r}, not "
                         f"{mode!r}; choose another --database")


def _generation_key(index: int) -> str:
    return f"generation={index:04d}"


class _Session:
    """What every unit of one study rebuilds: the dense model (from the work directory), its
    level space and database, the calibration pool and the fitness."""

    def __init__(self, config: EvoPressConfig, ctx: StudyContext, model: nn.Module) -> None:
        self.config, self.ctx = config, ctx
        self.device = ctx.device
        self.model = model.to(self.device).eval()
        self.space = config.space(self.model)
        data = ctx.data
        order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(
            derive_seed("evopress-calibration", config.seed)))[:config.calibration]
        self.pool_x = data.x_train[order].to(self.device)
        self.pool_y = data.y_train[order].to(self.device)
        self.database: LevelDatabase | None = None

    @property
    def work_dir(self) -> Path:
        return work_dir(self.ctx)

    @property
    def database_path(self) -> Path:
        if self.config.database is not None:
            return Path(self.config.database)
        return self.work_dir / "database.safetensors"

    def calibration_batches(self, batch_size: int = 64) -> list[Tensor]:
        return list(self.pool_x.split(batch_size))

    def open_database(self) -> None:
        if self.space.mode != "depth":
            self.database = LevelDatabase.open(self.database_path, self.model, self.space.mode)
            self._check_database()

    def _check_database(self) -> None:
        if self.space.mode == "sparsity" and self.database.pruner != self.config.pruner:
            raise ValueError(f"database {str(self.database_path)!r} was built with pruner "
                             f"{self.database.pruner!r}, not {self.config.pruner!r}")
        expected = {name: list(values) for name, values in zip(self.space.unit_names,
                                                                self.space.values)}
        if self.database.levels != expected:
            raise ValueError(f"database {str(self.database_path)!r} holds other levels than "
                             f"this study's (other target or num_levels)")

    def build_or_open_database(self) -> None:
        if self.space.mode == "depth":
            return
        if self.database_path.exists():
            self.open_database()
            return
        self.database = LevelDatabase.build(
            self.database_path, self.model, self.space, self.calibration_batches(),
            pruner=self.config.pruner, group_size=self.config.group_size)

    def runner(self):
        if self.config.kernel == "sequential":
            return SequentialCandidates(self.model, self.space, self.database)
        return BatchedCandidates(self.model, self.space, self.database, self.config.kernel)

    def fitness(self) -> Fitness:
        return Fitness(self.runner(), self.pool_x, self.pool_y, self.config.fitness)


def work_dir(ctx: StudyContext) -> Path:
    """Where a study keeps its dense model and database (see the module docstring)."""
    if ctx.checkpoint_dir is not None:
        return Path(ctx.checkpoint_dir)
    if ctx.store_path is None:
        raise ValueError("evopress: the study has neither a checkpoint directory nor a store "
                         "path to keep its dense model and database beside")
    store = Path(ctx.store_path)
    return store.parent / f"{store.stem}.{ctx.study}.evopress"


@torch.no_grad()
def held_out(model: nn.Module, runner, candidates: list, x: Tensor, y: Tensor, classify: bool,
             batch_size: int = 64) -> list[dict[str, float]]:
    """Per configuration on (x, y): KL(dense ``model`` ‖ compressed), cross-entropy, and
    accuracy (classifiers) or perplexity (language models); ``runner(candidates, x)`` gives the
    compressed outputs [K, N, ...]."""
    kl = torch.zeros(len(candidates), dtype=torch.float64)
    loss = torch.zeros_like(kl)
    correct = torch.zeros_like(kl)
    count = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        dense = model(xb).float().log_softmax(-1)
        log_probs = runner(candidates, xb).float().log_softmax(-1)
        kl += (dense.exp() * (dense - log_probs)).sum(-1).flatten(1).double().sum(1).cpu()
        targets = yb.unsqueeze(0).expand(len(candidates), *yb.shape)
        loss += (-log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).flatten(1).double() \
            .sum(1).cpu()
        correct += (log_probs.argmax(-1) == targets).flatten(1).double().sum(1).cpu()
        count += yb.numel()
    rows = []
    for k in range(len(candidates)):
        row = {"kl": float(kl[k] / count), "loss": float(loss[k] / count)}
        if classify:
            row["accuracy"] = float(correct[k] / count)
        else:
            row["perplexity"] = math.exp(row["loss"])
        rows.append(row)
    return rows


@STRATEGIES.register("evopress")
class EvoPress(Strategy):
    name = "evopress"
    description = ("EvoPress: (1+λ) evolution with racing selection over per-layer sparsity, "
                   "depth or bit-width at an exact global budget, against uniform, OWL, "
                   "best-of-random and block-importance baselines")
    Config = EvoPressConfig
    presets = {
        "quick": {"embed_width": 32, "blocks": 4, "heads": 2, "lm_steps": 200,
                  "offspring": 8, "generations": 6, "stage_survivors": [4, 2, 1],
                  "stage_examples": [8, 16, 48], "calibration": 64, "eval_examples": 64,
                  "random_count": 8, "num_levels": 3, "epochs": 10},
    }

    def check_data(self, data: Dataset) -> None:
        """A model with too few compressible layers or a target its levels cannot reach fails
        here, before the study is recorded."""
        c = self.config
        c.space(c.build_model((data.input_shape, data.num_classes)))
        if len(data.x_train) < c.calibration:
            raise ValueError(f"calibration ({c.calibration}) is larger than the train split of "
                             f"{c.data.dataset} ({len(data.x_train)} examples)")

    def plan(self) -> list[Unit]:
        units = [Unit("dense", "dense")]
        for index in range(1, self.config.generations + 1):
            units.append(Unit(_generation_key(index), "generation", {"generation": index},
                              depends_on=(units[-1].key,)))
        units.append(Unit("final", "final", depends_on=(units[-1].key,)))
        return units

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        start = time.perf_counter()
        if unit.kind == "dense":
            trials = self._dense(ctx)
        else:
            session = _Session(self.config, ctx, self._load_dense(ctx))
            session.open_database()
            trials = (self._generation(unit, ctx, session) if unit.kind == "generation" else
                      self._final(unit, ctx, session))
        seconds = (time.perf_counter() - start) / len(trials)
        return [dataclasses.replace(trial, seconds=seconds) for trial in trials]

    # Units -------------------------------------------------------------------------------------

    def _train(self, model: nn.Module, ctx: StudyContext) -> nn.Module:
        c = self.config
        seed = derive_seed("evopress-train", c.seed)
        data: Dataset = ctx.data
        model = model.to(ctx.device)
        if c.model == "gpt":
            train_language_model(model, data.x_train.to(ctx.device), data.y_train.to(ctx.device),
                                 c.lm_steps, c.lm_batch_size, c.lm_lr, seed)
        else:
            Trainer(c.training, ctx.hooks, device=ctx.device).fit(model, data, seed=seed)
        return model.eval()

    def _dense(self, ctx: StudyContext) -> list[TrialRecord]:
        c = self.config
        data = ctx.data
        model = self._train(c.build_model((data.input_shape, data.num_classes)), ctx)
        session = _Session(c, ctx, model)
        # Tied weights share storage, which safetensors refuses: store each tensor separately.
        save_checkpoint(session.work_dir / "dense.safetensors",
                        {k: v.clone() for k, v in model.state_dict().items()})
        session.build_or_open_database()
        dense = held_out(model, lambda candidates, x: model(x).unsqueeze(0), [None],
                         *self._eval_set(session), classify=c.model != "gpt")[0]
        metric = "accuracy" if c.model != "gpt" else "perplexity"
        final = {metric: dense[metric], "loss": dense["loss"], "units": session.space.num_units,
                 "budget": session.space.budget,
                 "database_bytes": (session.database.size_bytes()
                                    if session.database is not None else 0)}
        config = {"units": session.space.unit_names}  # paths are runtime facts, not results
        return [TrialRecord(key="dense", kind="dense", seed=c.seed, config=config, epochs=[],
                            final=final, seconds=0.0)]

    def _load_dense(self, ctx: StudyContext) -> nn.Module:
        data = ctx.data
        model = self.config.build_model((data.input_shape, data.num_classes))
        path = work_dir(ctx) / "dense.safetensors"
        if not path.is_file():
            raise ValueError(f"evopress: the dense model {str(path)!r} is missing (the work "
                             f"directory beside the store was removed); start a new study")
        state, _ = load_checkpoint(path)
        model.load_state_dict(state)
        return model.eval()

    def _generation(self, unit: Unit, ctx: StudyContext, session: _Session) -> list[TrialRecord]:
        c = self.config
        index = unit.params["generation"]
        previous_key = unit.depends_on[0]
        if index == 1:
            state = initial_state(session.space)
        else:
            (previous,) = ctx.trials(previous_key)
            state = Generation.from_dict(previous.config["state"])
        evolution = c.evolution
        next_state, stages = run_generation(state, session.space, evolution, session.fitness(),
                                            len(session.pool_x))
        config = {"parent": session.space.encode(state.parent),
                  "offspring": stages[0]["candidates"],
                  "stages": stages, "rng": generation_seeds(evolution, state.index),
                  "state": next_state.to_dict(), "levels": session.space.encode(next_state.parent)}
        final = {"fitness": next_state.parent_fitness,
                 "cost": session.space.total_cost(next_state.parent),
                 "improved": next_state.parent != state.parent}
        return [TrialRecord(key=unit.key, kind="generation", seed=c.seed, config=config,
                            epochs=[], final=final, seconds=0.0, parent=previous_key,
                            generation=index)]

    def _eval_set(self, session: _Session) -> tuple[Tensor, Tensor]:
        data = session.ctx.data
        n = min(self.config.eval_examples, len(data.x_test))
        return data.x_test[:n].to(session.device), data.y_test[:n].to(session.device)

    def _final(self, unit: Unit, ctx: StudyContext, session: _Session) -> list[TrialRecord]:
        c = self.config
        space = session.space
        (last,) = ctx.trials(unit.depends_on[0])
        found = space.decode(last.config["levels"])
        methods: dict[str, tuple[Any, dict[str, Any]]] = {
            "evopress": (found, {"found": last.key}), "uniform": (baselines.uniform(space), {})}
        if space.mode == "sparsity":
            ratios = baselines.outlier_ratios(session.model, space.unit_names,
                                              session.calibration_batches(), c.owl_threshold)
            methods["owl"] = (baselines.owl(space, ratios, c.owl_lambda),
                              {"outlier_ratios": ratios})
        if space.mode == "depth":
            similarities = baselines.block_similarities(session.model, space.unit_names,
                                                        session.calibration_batches())
            methods["block-importance"] = (baselines.least_important_blocks(space, similarities),
                                           {"similarities": similarities})
        examples = torch.arange(max(c.stage_examples))
        random_seed = derive_seed("evopress-random", c.seed)
        best, search_fitness = baselines.best_of_random(space, session.fitness(), examples,
                                                        c.random_count, random_seed)
        methods["random"] = (best, {"search_fitness": search_fitness, "candidates": [
            space.encode(x) for x in space.sample(c.random_count, random_seed)]})
        names = list(methods)
        candidates = [methods[name][0] for name in names]
        outcomes = held_out(session.model, session.runner(), candidates, *self._eval_set(session),
                            classify=c.model != "gpt")
        trials = []
        for name, candidate, outcome in zip(names, candidates, outcomes):
            described = space.describe(candidate)
            trials.append(TrialRecord(
                key=f"final/{name}", kind="final", seed=c.seed,
                config={"method": name, "levels_encoded": space.encode(candidate),
                        **described, **methods[name][1]},
                epochs=[], final={"fitness": outcome["kl"], **outcome}, seconds=0.0,
                parent=last.key if name == "evopress" else None))
        return trials

    # Summary -----------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        metric = "perplexity" if c.model == "gpt" else "accuracy"
        dense = next((t for t in trials if t.kind == "dense"), None)
        rows = []
        if dense is not None:
            rows.append({"mode": c.mode, "target": c.target, "method": "dense", "fitness": 0.0,
                         metric: dense.final[metric], "cost": None})
        for t in sorted((t for t in trials if t.kind == "final"),
                        key=lambda t: t.final["fitness"]):
            rows.append({"mode": c.mode, "target": c.target, "method": t.config["method"],
                         "fitness": t.final["fitness"], metric: t.final[metric],
                         "cost": t.config["cost"]})
        generations = sorted((t for t in trials if t.kind == "generation"),
                             key=lambda t: t.generation)
        curve = [(t.generation, t.final["fitness"]) for t in generations]
        # per unit in the model's order (the stored dict's key order is not kept)
        units = dense.config["units"] if dense is not None else []
        final_levels = {t.config["method"]: dict(zip(units, map(int, t.config[
            "levels_encoded"].split(",")))) for t in trials if t.kind == "final"}
        return Summary(rows, self._table(rows, metric, dense, len(curve)),
                       {"curve": curve, "levels": final_levels})

    def _table(self, rows: list[dict], metric: str, dense: TrialRecord | None,
               generations: int) -> str:
        c = self.config
        model = (f"gpt (width {c.embed_width}, {c.blocks} blocks, {c.lm_steps} steps)"
                 if c.model == "gpt" else
                 f"vit (width {c.embed_width}, {c.blocks} blocks, {c.training.epochs} epochs)"
                 if c.model == "vit" else
                 f"{c.model} {list(c.widths)} ({c.training.epochs} epochs)")
        model += f" on {c.data.dataset}"
        pruner = f", pruner {c.pruner}" if c.mode == "sparsity" else ""
        lines = [
            f"EvoPress, mode {c.mode}, target {c.target:g}{pruner}: {model}; {generations} / "
            f"{c.generations} generations of {c.offspring} offspring, racing stages "
            f"{list(zip(c.stage_survivors, c.stage_examples))} on a pool of {c.calibration}; "
            f"fitness = KL(dense || compressed) on {c.eval_examples} held-out test examples.",
            f"Database: {dense.final['database_bytes']} bytes." if dense else "",
            "",
            f"| method | fitness (held-out KL) | {metric} |",
            "|---|---|---|",
        ]
        for r in rows:
            value = r[metric]
            shown = f"{100 * value:.2f} %" if metric == "accuracy" else f"{value:.3f}"
            lines.append(f"| {r['method']} | {r['fitness']:.4f} | {shown} |")
        return "\n".join(lines) + "\n"

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths = {}
        curve = summary.details["curve"]
        figure, axes = plt.subplots(figsize=(6, 4))
        if curve:
            axes.plot(*zip(*curve), marker="o")
        axes.set_xlabel("generation")
        axes.set_ylabel(f"parent fitness ({self.config.fitness}, last racing stage)")
        axes.set_title("EvoPress: fitness against generation")
        axes.grid(alpha=0.3)
        paths["fitness_plot"] = save_figure(figure, out_dir / "fitness.png")

        levels = summary.details["levels"]
        figure, axes = plt.subplots(figsize=(max(6, 0.35 * max((len(v) for v in levels.values()),
                                                                 default=0)), 4))
        width = 0.8 / max(len(levels), 1)
        for i, (method, per_unit) in enumerate(sorted(levels.items())):
            positions = np.arange(len(per_unit)) + i * width
            axes.bar(positions, list(per_unit.values()), width, label=method)
            if i == 0:
                axes.set_xticks(np.arange(len(per_unit)) + 0.4 - width / 2)
                axes.set_xticklabels(list(per_unit), rotation=90, fontsize=6)
        labels = {"sparsity": "level (higher = sparser)", "depth": "dropped (1) / kept (0)",
                  "bits": "bits"}
        axes.set_ylabel(labels[self.config.mode])
        axes.set_title("per-layer levels found")
        if levels:
            axes.legend(fontsize=7)
        figure.tight_layout()
        paths["levels_plot"] = save_figure(figure, out_dir / "levels.png")
        return paths


__all__ = ["EvoPress", "EvoPressConfig", "held_out", "work_dir"]

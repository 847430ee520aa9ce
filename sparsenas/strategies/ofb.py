"""OFB (Once for Both), the study: a one-stage width search of a small ViT to a FLOPs target,
export to a plain smaller ViT, fine-tuning, and its ablations at the same FLOPs target.

Variants (each trained from the same initialisation and batch order per seed):

- ``ofb``: the full method (bi-mask, adaptive one-hot loss, progressive elimination with
  physical shrinking, PMIM);
- ``no-pmim``: without progressive masked image modelling;
- ``entropy-only``: the one-hot loss without its adaptive tan term (entropy alone);
- ``importance-only``: w_p = 1 throughout (the activations are scaled by the importance
  scores only; the staircase still picks the widths through the FLOPs loss);
- ``uniform``: every width of the parent scaled by one ratio, the largest whose FLOPs stay
  within the target, trained from scratch for as many epochs as a search and its fine-tuning.

Units, per seed and searched variant: ``seed=<s>/<variant>/search/epoch=<e>`` for
e = 1 .. search_epochs (each depends on the one before; it loads the previous epoch's checkpoint,
trains one epoch and checkpoints) and ``seed=<s>/<variant>/finetune`` (exports the searched network
to a plain ViT, fine-tunes it and measures its FLOPs, parameters, test accuracy and latency
against the parent's). When every unit's choice is down to one candidate the search has ended:
the remaining search epochs train nothing and the fine-tuning gets them instead, so every variant
trains ``search_epochs + epochs`` epochs in total. ``uniform`` is one unit,
``seed=<s>/uniform/train``.

Checkpoints (safetensors: the supernet's weights in their shrunk shapes, the train step's
progress and the trainer's optimiser / scheduler state) go to ``CHECKPOINT_DIR/<study>/`` where
CHECKPOINT_DIR is the study's checkpoint directory (``OUT/checkpoints`` with ``--save-models``),
else ``<store directory>/<store name>.checkpoints``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsenas.config import ConfigPiece, option
from sparsenas.data import DataConfig, Dataset
from sparsenas.methods.ofb import OFBSupernet, kept_sizes, to_plain_vit, uniform_widths
from sparsenas.methods.ofb.objective import OFBConfig, OFBObjective, ofb_step
from sparsenas.models.vit import ViT, flops, num_parameters
from sparsenas.report.io import save_figure
from sparsenas.report.plots import plot_pareto_front
from sparsenas.report.stats import welch_p_value
from sparsenas.seeds import derive_seed
from sparsenas.store import TrialRecord, load_state, save_state
from sparsenas.strategies.base import STRATEGIES, Strategy, Summary
from sparsenas.strategies.random_search import check_seeds
from sparsenas.study import RuntimeConfig, StudyContext, Unit, epoch_chain
from sparsenas.train import TrainConfig, Trainer, TrainerHook
from sparsenas.train.latency import measure_latencies

SEARCHED = ("ofb", "no-pmim", "entropy-only", "importance-only")
VARIANTS = (*SEARCHED, "uniform")
_OBJECTIVE_OPTIONS = {"ofb": {}, "no-pmim": {"pmim": False},
                      "entropy-only": {"entropy_only": True},
                      "importance-only": {"importance_only": True}}
# The export must land within this relative distance of the FLOPs target.
FLOPS_TOLERANCE = 0.03
LATENCY_BATCH = 64


@dataclass(frozen=True)
class OFBStudyConfig(ConfigPiece):
    data: DataConfig = DataConfig()
    training: TrainConfig = TrainConfig(epochs=10, batch_size=32, lr=2e-3, optimizer="adam",
                                        weight_decay=0.0)
    runtime: RuntimeConfig = RuntimeConfig()
    patch_size: int = option(2, "ViT patch size (must divide the image's height and width)")
    embed_dim: int = option(32, "ViT embedding width of the parent")
    depth: int = option(2, "ViT blocks")
    num_heads: int = option(2, "attention heads (the per-head qkv width is embed_dim / heads)")
    mlp_ratio: float = option(2.0, "MLP hidden width of the parent / embed_dim")
    embed_ratios: tuple[float, ...] = option((0.5, 0.75, 1.0), "candidate keep ratios of the "
                                             "embedding width, increasing in (0, 1]")
    attn_ratios: tuple[float, ...] = option((0.5, 0.75, 1.0), "candidate keep ratios of each "
                                            "block's per-head qkv width, increasing in (0, 1]")
    mlp_ratios: tuple[float, ...] = option((0.25, 0.5, 0.75, 1.0), "candidate keep ratios of "
                                           "each block's MLP hidden width, increasing in (0, 1]")
    target_ratio: float = option(0.5, "FLOPs target as a fraction of the parent's FLOPs (at "
                                      "least the smallest candidate network's)")
    search_epochs: int = option(15, "epochs of the search (it ends earlier when every choice is "
                                    "made); epochs (--epochs) of fine-tuning follow")
    warmup_epochs: float = option(5.0, "epochs over which w_p decays 0.99 -> 0.1 and the PMIM "
                                       "keep ratio 0.95 -> 0.75")
    checks_per_epoch: int = option(3, "progressive-elimination checks per epoch")
    one_hot_weight: float = option(0.3, "weight of the adaptive one-hot loss")
    score_weight: float = option(0.01, "weight of the L1 term on the importance scores")
    flops_weight: float = option(100.0, "weight of the FLOPs loss")
    pmim_weight: float = option(1.0, "weight of the PMIM reconstruction loss relative to the "
                                     "classification loss")
    arch_lr: float = option(0.05, "Adam learning rate of the architecture logits")
    score_lr: float = option(0.01, "Adam learning rate of the importance scores")
    variants: tuple[str, ...] = option(VARIANTS, f"variants to run: {', '.join(VARIANTS)}")
    seeds: tuple[int, ...] = option((0, 1, 2), "study seeds, e.g. 0,1,2")

    def validate(self) -> None:
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "search_epochs",
                     "checks_per_epoch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads "
                             f"{self.num_heads}")
        if self.mlp_ratio <= 0 or self.warmup_epochs <= 0:
            raise ValueError(f"mlp_ratio and warmup_epochs must be positive, got "
                             f"{self.mlp_ratio} and {self.warmup_epochs}")
        for name, width in self.unit_widths().items():
            kept_sizes(width, getattr(self, name), name)
        if not 0.0 < self.target_ratio <= 1.0:
            raise ValueError(f"target_ratio {self.target_ratio:g} must be in (0, 1]: a FLOPs "
                             f"target above the parent's cannot be a compression")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or unknown or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct names among {', '.join(VARIANTS)}, got "
                             f"{', '.join(self.variants) or 'none'}")
        check_seeds(self.seeds)

    def unit_widths(self) -> dict[str, int]:
        """The parent width each ratio option applies to."""
        return {"embed_ratios": self.embed_dim, "attn_ratios": self.embed_dim // self.num_heads,
                "mlp_ratios": max(1, round(self.mlp_ratio * self.embed_dim))}

    def parent(self, data: Dataset, seed: int) -> ViT:
        """The parent ViT for ``data``, its initialisation drawn from ``seed`` on the CPU."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("init", seed))
            return ViT(data.input_shape, data.num_classes, patch_size=self.patch_size,
                       embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                       mlp_ratio=self.mlp_ratio)

    def supernet(self, data: Dataset, seed: int) -> OFBSupernet:
        """The parent of ``seed`` with searchable widths (the PMIM decoder's initialisation
        drawn from ``seed`` too)."""
        parent = self.parent(data, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("init", seed, "pmim-decoder"))
            return OFBSupernet(parent, {"embed": self.embed_ratios, "attn": self.attn_ratios,
                                        "mlp": self.mlp_ratios})

    def steps_per_epoch(self, data: Dataset) -> int:
        """Optimisation steps of one epoch (the trainer skips a last batch of one example)."""
        n, size = len(data.x_train), self.training.batch_size
        return n // size + (1 if n % size >= 2 else 0)

    def search_config(self, variant: str, data: Dataset, target_flops: float) -> OFBConfig:
        steps = self.steps_per_epoch(data)
        return OFBConfig(target_flops=target_flops,
                         warmup_steps=max(1, round(self.warmup_epochs * steps)),
                         eliminate_every=max(1, steps // self.checks_per_epoch),
                         one_hot_weight=self.one_hot_weight, score_weight=self.score_weight,
                         flops_weight=self.flops_weight, pmim_weight=self.pmim_weight,
                         arch_lr=self.arch_lr, score_lr=self.score_lr,
                         **_OBJECTIVE_OPTIONS[variant])


def _entropy(unit) -> float:
    probs = unit.alive_probs().detach().double()
    return float(-(probs * probs.clamp_min(1e-300).log()).sum())


def search_state(net: OFBSupernet, step: int) -> dict:
    """Where the search stands: per unit the entropy of p (nats), the alive candidates and the
    most probable width; the expected and the chosen networks' FLOPs."""
    with torch.no_grad():
        expected = float(net.expected_flops())
    return {"step": step, "expected_flops": expected,
            "chosen_flops": float(flops(net.chosen_widths(), net.vit.image_size)),
            "entropy": {name: _entropy(u) for name, u in net.units.items()},
            "alive": {name: u.num_alive for name, u in net.units.items()},
            "chosen": {name: u.chosen_size() for name, u in net.units.items()}}


class _SearchTrace(TrainerHook):
    """Records :func:`search_state` after every elimination check."""

    def __init__(self, objective: OFBObjective) -> None:
        self.objective = objective
        self.states: list[dict] = []

    def on_step_end(self, trainer, model, step, output) -> None:
        done = self.objective.step
        if done % self.objective.config.eliminate_every == 0:
            self.states.append(search_state(model, done))


@STRATEGIES.register("ofb")
class OnceForBoth(Strategy):
    name = "ofb"
    description = ("OFB (Once for Both): one-stage search of a ViT's widths to a FLOPs target "
                   "(bi-mask, adaptive one-hot loss, progressive shrinking, PMIM), export to a "
                   "plain smaller ViT and fine-tuning, against its ablations and uniform widths "
                   "at the same FLOPs")
    Config = OFBStudyConfig
    presets = {
        "quick": {"search_epochs": 6, "warmup_epochs": 3.0, "epochs": 3, "seeds": [0, 1]},
    }

    # Plan ------------------------------------------------------------------------------------

    def plan(self) -> list[Unit]:
        c = self.config
        units = []
        for seed in c.seeds:
            for variant in c.variants:
                if variant == "uniform":
                    units.append(Unit(f"seed={seed}/uniform/train", "uniform", {"seed": seed}))
                    continue
                search = epoch_chain(lambda e: _search_key(seed, variant, e), "search",
                                     {"seed": seed, "variant": variant},
                                     range(1, c.search_epochs + 1))
                units += search
                units.append(Unit(f"seed={seed}/{variant}/finetune", "finetune",
                                  {"seed": seed, "variant": variant},
                                  depends_on=(search[-1].key,)))
        return units

    def check_data(self, data: Dataset) -> None:
        c = self.config
        height, width = data.input_shape[-2:]
        if len(data.input_shape) != 3 or height % c.patch_size or width % c.patch_size:
            raise ValueError(f"patch_size {c.patch_size} does not divide the {height}x{width} "
                             f"images of {data.name}")
        net = c.supernet(data, c.seeds[0])
        target, smallest = c.target_ratio * net.original_flops, net.smallest_flops()
        if target < smallest:
            raise ValueError(f"target_ratio {c.target_ratio:g} ({target:.6g} FLOPs) is below the "
                             f"smallest candidate network's {smallest:.6g} FLOPs (target_ratio "
                             f"{smallest / net.original_flops:.4f}); raise it or lower the "
                             f"smallest keep ratios")

    # Units -----------------------------------------------------------------------------------

    def run_unit(self, unit: Unit, ctx: StudyContext) -> list[TrialRecord]:
        run = {"search": self._search_epoch, "finetune": self._finetune,
               "uniform": self._uniform}[unit.kind]
        return [run(unit, ctx)]

    def _checkpoint(self, ctx: StudyContext, key: str) -> Path:
        if ctx.checkpoint_dir is not None:
            base = ctx.checkpoint_dir
        elif ctx.store_path is not None:
            base = ctx.store_path.parent / f"{ctx.store_path.stem}.checkpoints"
        else:
            raise ValueError("ofb: a study needs a checkpoint directory or a store path to keep "
                             "its search state")
        return base / ctx.study / f"{key.replace('/', '_')}.safetensors"

    def _search(self, ctx: StudyContext, seed: int, variant: str):
        """A fresh supernet, its train step and the search's trainer."""
        c = self.config
        net = c.supernet(ctx.data, seed)
        objective = c.search_config(variant, ctx.data, c.target_ratio * net.original_flops)
        step = ofb_step(objective, net, derive_seed("ofb", seed, variant))
        trace = _SearchTrace(step.objective)
        trainer = Trainer(dataclasses.replace(c.training, epochs=c.search_epochs),
                          [*ctx.hooks, trace], step=step, device=ctx.device)
        return net, step, trainer, trace

    def _load_search(self, ctx: StudyContext, key: str, net: OFBSupernet, step) -> dict:
        """Restores the supernet (shrunk shapes included) and the step's progress from the
        checkpoint of unit ``key``; returns the trainer's state."""
        state = load_state(self._checkpoint(ctx, key))
        net.resize_like(state["model"])
        net.load_state_dict(state["model"])
        step.load_state_dict(state["step"])
        return state["trainer"]

    def _search_epoch(self, unit: Unit, ctx: StudyContext) -> TrialRecord:
        seed, variant, epoch = unit.params["seed"], unit.params["variant"], unit.params["epoch"]
        config = {"variant": variant, "epoch": epoch}
        if epoch > 1:
            previous = ctx.trials(unit.depends_on[0])[0]
            if previous.final["all_frozen"]:  # the search has ended: nothing left to train
                return TrialRecord(unit.key, "search", seed, {**config, "trained": False}, [],
                                   previous.final, 0.0)
        net, step, trainer, trace = self._search(ctx, seed, variant)
        trainer_state = None
        if epoch > 1:
            trainer_state = self._load_search(ctx, unit.depends_on[0], net, step)
        else:
            trace.states.append(search_state(net, 0))
        result = trainer.fit(net, ctx.data, seed=derive_seed("search-batches", seed),
                             start_epoch=epoch, end_epoch=epoch, state=trainer_state)
        save_state(self._checkpoint(ctx, unit.key),
                   {"model": net.state_dict(), "step": step.state_dict(),
                    "trainer": result.state})
        final = {**result.candidate_final(0), **search_state(net, step.objective.step),
                 "all_frozen": net.all_frozen, "searched_epochs": epoch,
                 "target_flops": step.objective.config.target_flops}
        history = [{**row, "trace": trace.states} for row in result.candidate_history(0)]
        return TrialRecord(unit.key, "search", seed, {**config, "trained": True}, history, final,
                           result.seconds)

    def _finetune(self, unit: Unit, ctx: StudyContext) -> TrialRecord:
        c = self.config
        seed, variant = unit.params["seed"], unit.params["variant"]
        searched = ctx.trials(unit.depends_on[0])[0].final
        net, step, _, _ = self._search(ctx, seed, variant)
        self._load_search(ctx, _search_key(seed, variant, searched["searched_epochs"]), net, step)
        plain = to_plain_vit(net)
        epochs = c.training.epochs + c.search_epochs - searched["searched_epochs"]
        config = {"variant": variant, "widths": _widths_record(plain),
                  "searched_epochs": searched["searched_epochs"], "finetune_epochs": epochs,
                  "all_frozen": searched["all_frozen"],
                  "max_probs": {name: float(u.alive_probs().detach().max())
                                for name, u in net.units.items()}}
        return self._train_final(unit, ctx, plain, config, derive_seed("finetune-batches", seed),
                                 searched["target_flops"])

    def _uniform(self, unit: Unit, ctx: StudyContext) -> TrialRecord:
        c = self.config
        seed = unit.params["seed"]
        parent = c.parent(ctx.data, seed)
        target = c.target_ratio * flops(parent, parent.image_size)
        widths = uniform_widths(parent.widths, parent.image_size, target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("init", seed, "uniform"))
            model = ViT.from_widths(widths, parent.image_size)
        config = {"variant": "uniform", "widths": _widths_record(model),
                  "finetune_epochs": c.search_epochs + c.training.epochs}
        return self._train_final(unit, ctx, model, config, derive_seed("uniform-batches", seed),
                                 target)

    def _train_final(self, unit: Unit, ctx: StudyContext, model: ViT, config: dict,
                     batch_seed: int, target: float) -> TrialRecord:
        """Trains ``model`` for ``config["finetune_epochs"]``; the trial holds its final
        metrics, its FLOPs against ``target`` and its latency against the parent's."""
        c = self.config
        trainer = Trainer(dataclasses.replace(c.training, epochs=config["finetune_epochs"]),
                          ctx.hooks, device=ctx.device)
        result = trainer.fit(model, ctx.data, seed=batch_seed)
        model_flops = float(model.flops())
        parent = c.parent(ctx.data, unit.params["seed"]).to(ctx.device)
        inputs = ctx.data.x_test[:LATENCY_BATCH].to(ctx.device)
        latency, parent_latency = measure_latencies([model, parent], inputs, c.runtime.threads)
        gap = model_flops / target - 1.0
        final = {**result.candidate_final(0), "flops": model_flops, "target_flops": target,
                 "flops_gap": gap, "flops_within_tolerance": abs(gap) <= FLOPS_TOLERANCE,
                 "params": int(num_parameters(model, model.image_size)),
                 "parent_flops": float(parent.flops()),
                 "latency_ms": 1e3 * latency, "parent_latency_ms": 1e3 * parent_latency,
                 "speedup": parent_latency / latency}
        return TrialRecord(unit.key, "final", unit.params["seed"], config,
                           result.candidate_history(0), final, result.seconds)

    # Summary ---------------------------------------------------------------------------------

    def summarize(self, trials: list[TrialRecord]) -> Summary:
        c = self.config
        finals = {v: [t for t in trials if t.kind == "final" and t.config["variant"] == v]
                  for v in c.variants}
        ofb_accs = [t.final["test_acc"] for t in finals.get("ofb", [])]
        rows = [_row(v, finals[v], ofb_accs) for v in c.variants]
        traces = {}
        for variant in c.variants:
            if variant == "uniform":
                continue
            for seed in c.seeds:
                epochs = sorted((t for t in trials if t.kind == "search"
                                 and t.seed == seed and t.config["variant"] == variant
                                 and t.config["trained"]), key=lambda t: t.config["epoch"])
                states = [s for t in epochs for row in t.epochs for s in row["trace"]]
                if states:
                    traces[(variant, seed)] = states
        targets = [t.final["target_flops"] for t in trials]
        return Summary(rows, self._table(rows, finals),
                       {"traces": traces, "finals": finals,
                        "target": targets[0] if targets else None})

    def _table(self, rows: list[dict], finals: dict[str, list[TrialRecord]]) -> str:
        c = self.config
        widths = (f"embed {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, MLP "
                  f"{c.unit_widths()['mlp_ratios']}, patch {c.patch_size}")
        lines = [
            f"OFB on {c.data.dataset}: ViT ({widths}), FLOPs target {c.target_ratio:g} x the "
            f"parent's; search {c.search_epochs} epochs + fine-tuning {c.training.epochs} "
            f"(uniform: {c.search_epochs + c.training.epochs} epochs from scratch); seeds "
            f"{list(c.seeds)}.",
            "",
            "| variant | target FLOPs | FLOPs (mean) | params (mean) | test acc % | n | "
            "Welch p vs ofb | within ±3% of target | every α one-hot | latency ms (parent's) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            trials = finals[row["variant"]]
            if not trials:
                lines.append(f"| {row['variant']} | — | — | — | — | 0 | — | — | — | — |")
                continue
            spread = f" ± {100 * row['std_acc']:.2f}" if row["n"] > 1 else ""
            one_hot = ("—" if row["variant"] == "uniform" else
                       f"{sum(t.config['all_frozen'] for t in trials)}/{row['n']}")
            lines.append(
                f"| {row['variant']} | {row['target_flops']:.4g} | {row['flops']:.4g} | "
                f"{row['params']:.0f} | {100 * row['mean_acc']:.2f}{spread} | {row['n']} | "
                f"{'—' if math.isnan(row['p_vs_ofb']) else format(row['p_vs_ofb'], '.3f')} | "
                f"{sum(t.final['flops_within_tolerance'] for t in trials)}/{row['n']} | "
                f"{one_hot} | {row['latency_ms']:.3f} ({row['parent_latency_ms']:.3f}) |")
        lines += ["", *self._claim(rows, finals)]
        return "\n".join(lines) + "\n"

    def _claim(self, rows: list[dict], finals: dict[str, list[TrialRecord]]) -> list[str]:
        """The claim checked on the finished runs, one line per part."""
        by_variant = {row["variant"]: row for row in rows if row["n"]}
        searched = [t for v in SEARCHED if v in finals for t in finals[v]]
        lines = []
        if searched:
            one_hot = sum(t.config["all_frozen"] for t in searched)
            lines.append(f"- every unit's α one-hot at the end of the search: {one_hot}/"
                         f"{len(searched)} searches")
            within = sum(t.final["flops_within_tolerance"] for t in searched)
            lines.append(f"- exported FLOPs within ±3% of the target: {within}/{len(searched)} "
                         f"searches")
        if "ofb" in by_variant:
            ofb = by_variant["ofb"]["mean_acc"]
            for variant, row in by_variant.items():
                if variant != "ofb":
                    verdict = "yes" if ofb >= row["mean_acc"] else "no"
                    lines.append(f"- ofb at least as accurate as {variant} (mean test acc): "
                                 f"{verdict} ({100 * ofb:.2f} vs {100 * row['mean_acc']:.2f})")
        return lines

    def plots(self, summary: Summary, trials: list[TrialRecord], out_dir: Path) -> dict[str, Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        traces, finals = summary.details["traces"], summary.details["finals"]
        searched = [v for v in self.config.variants if v != "uniform"]
        paths = {}
        figure, axes = plt.subplots(1, max(1, len(searched)), figsize=(4 * len(searched) + 1, 3.5),
                                    squeeze=False, sharey=True)
        for ax, variant in zip(axes[0], searched):
            seed = next((s for s in self.config.seeds if (variant, s) in traces), None)
            if seed is not None:
                states = traces[(variant, seed)]
                steps = [s["step"] for s in states]
                for name in states[0]["entropy"]:
                    ax.plot(steps, [s["entropy"][name] for s in states], label=name)
                ax.set_title(f"{variant} (seed {seed})")
            ax.set_xlabel("optimisation step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("entropy of p = softmax(α) (nats)")
        axes[0][0].legend(fontsize=7)
        paths["entropy_plot"] = save_figure(figure, out_dir / "alpha_entropy.png")

        figure, ax = plt.subplots(figsize=(6, 4))
        for variant in searched:
            seed = next((s for s in self.config.seeds if (variant, s) in traces), None)
            if seed is None:
                continue
            states = traces[(variant, seed)]
            line, = ax.plot([s["step"] for s in states], [s["expected_flops"] for s in states],
                            label=f"{variant}: expected")
            ax.plot([s["step"] for s in states], [s["chosen_flops"] for s in states],
                    linestyle="--", color=line.get_color(), label=f"{variant}: most probable")
        if summary.details["target"] is not None:
            ax.axhline(summary.details["target"], color="black", linewidth=1, label="target")
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("FLOPs (multiply-accumulates per image)")
        ax.set_title("FLOPs during the search (first seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths["flops_plot"] = save_figure(figure, out_dir / "flops_during_search.png")

        series = {variant: ([t.final["flops"] for t in group],
                            [100 * t.final["test_acc"] for t in group])
                  for variant, group in finals.items() if group}
        if series:
            paths["accuracy_plot"] = plot_pareto_front(
                series, out_dir / "accuracy_vs_flops.png", cost_name="FLOPs of the final network",
                accuracy_name="test accuracy %",
                title=f"accuracy against FLOPs (target {summary.details['target']:.4g})")
        return paths


def _search_key(seed: int, variant: str, epoch: int) -> str:
    return f"seed={seed}/{variant}/search/epoch={epoch:03d}"


def _widths_record(model: ViT) -> dict:
    w = model.widths
    return {"embed": int(w.embed), "head_dims": list(w.head_dims),
            "mlp_hidden": list(w.mlp_hidden)}


def _row(variant: str, trials: list[TrialRecord], ofb_accs: list[float]) -> dict:
    def mean(key: str) -> float | None:
        return float(np.mean([t.final[key] for t in trials])) if trials else None

    accs = [t.final["test_acc"] for t in trials]
    return {"variant": variant, "target_flops": mean("target_flops"), "flops": mean("flops"),
            "params": mean("params"), "mean_acc": mean("test_acc"),
            "std_acc": float(np.std(accs, ddof=1)) if len(accs) > 1 else (0.0 if accs else None),
            "n": len(trials),
            "p_vs_ofb": math.nan if variant == "ofb" else welch_p_value(accs, ofb_accs),
            "flops_within_tolerance": sum(t.final["flops_within_tolerance"] for t in trials),
            "all_frozen": (None if variant == "uniform"
                           else sum(t.config["all_frozen"] for t in trials)),
            "latency_ms": mean("latency_ms"), "parent_latency_ms": mean("parent_latency_ms"),
            "speedup": mean("speedup")}


__all__ = ["OFBStudyConfig", "OnceForBoth", "SEARCHED", "VARIANTS", "search_state"]

"""The OFB study end to end: units, checkpoints, export and fine-tuning, determinism, the summary
and plots, a search that ends early, bad input as one-line CLI errors, and kill -9 / resume
through the CLI (search checkpoints with shrunk shapes)."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from study_helpers import cli, flags, run_in_process
from test_cli import _one_line_error
from test_data import _write_cifar_batch

from sparsenas.cli import main
from sparsenas.config import from_flat
from sparsenas.data import load_dataset
from sparsenas.methods.ofb import uniform_widths
from sparsenas.models.vit import ViT, flops, num_parameters
from sparsenas.store import Store, load_state
from sparsenas.strategies.ofb import VARIANTS, OnceForBoth
from sparsenas.study import Study
from sparsenas.train.latency import measure_latencies

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=8, depth=1, num_heads=2, mlp_ratio=2.0, search_epochs=2, epochs=1,
            warmup_epochs=1.0, batch_size=128, seeds=(0,), target_ratio=0.6)
MEASURED = ("latency_ms", "parent_latency_ms", "speedup")  # timings: machine-dependent


def outcome(store: Store) -> dict:
    """Every trial without its timings."""
    result = {}
    for t in store.trials("ofb"):
        final = {k: v for k, v in t.final.items() if k not in MEASURED}
        epochs = [{k: v for k, v in row.items() if k != "seconds"} for row in t.epochs]
        result[t.key] = (t.unit, t.kind, t.seed, t.config, final, epochs)
    return result


def summary_rows(out) -> list[dict]:
    rows = json.loads((out / "summary.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("ofb") / "study.sqlite"
    run_in_process(OnceForBoth, path, TINY, out=path.parent / "report")
    return path


def test_plan_chains_search_epochs_then_fine_tuning():
    units = OnceForBoth(from_flat(OnceForBoth.Config, {**TINY, "seeds": (0, 1)})).plan()
    keys = [u.key for u in units]
    assert keys[:3] == ["seed=0/ofb/search/epoch=001", "seed=0/ofb/search/epoch=002",
                        "seed=0/ofb/finetune"]
    assert units[1].depends_on == ("seed=0/ofb/search/epoch=001",)
    assert units[2].depends_on == ("seed=0/ofb/search/epoch=002",)
    assert "seed=1/uniform/train" in keys and len(units) == 2 * (4 * 3 + 1)


def test_tiny_study_end_to_end(tiny):
    with Store(tiny, readonly=True) as store:
        trials = {t.key: t for t in store.trials("ofb")}
    data = load_dataset("digits", seed=0)
    parent = ViT(data.input_shape, 10, embed_dim=8, depth=1, num_heads=2, mlp_ratio=2.0)
    parent_flops = flops(parent, (8, 8))
    for variant in VARIANTS:
        key = "seed=0/uniform/train" if variant == "uniform" else f"seed=0/{variant}/finetune"
        final, config = trials[key].final, trials[key].config
        # FLOPs and parameters of the final network, recomputed from its widths.
        widths = parent.widths.__class__(1, 2, 10, 2, config["widths"]["embed"],
                                         tuple(config["widths"]["head_dims"]),
                                         tuple(config["widths"]["mlp_hidden"]))
        assert final["flops"] == flops(widths, (8, 8))
        assert final["params"] == num_parameters(widths, (8, 8))
        assert final["target_flops"] == pytest.approx(0.6 * parent_flops)
        assert final["flops_within_tolerance"] == (abs(final["flops"] / final["target_flops"] - 1)
                                                   <= 0.03)
        assert final["parent_flops"] == parent_flops
        assert final["latency_ms"] > 0 and final["parent_latency_ms"] > 0
        assert 0.0 <= final["test_acc"] <= 1.0
        assert len(trials[key].epochs) == TINY["search_epochs"] + TINY["epochs"] - \
            config.get("searched_epochs", 0)
    uniform = trials["seed=0/uniform/train"].config["widths"]
    expected = uniform_widths(parent.widths, (8, 8), 0.6 * parent_flops)
    assert uniform == {"embed": expected.embed, "head_dims": list(expected.head_dims),
                       "mlp_hidden": list(expected.mlp_hidden)}
    # The search records where it stands after every elimination check; the first search epoch
    # starts from the untouched supernet (uniform p over every candidate).
    first = trials["seed=0/ofb/search/epoch=001"].epochs[0]["trace"]
    assert first[0]["step"] == 0 and first[0]["alive"] == {
        "embed": 3, "attn_0": 3, "mlp_0": 4}
    assert first[0]["entropy"]["mlp_0"] == pytest.approx(torch.log(torch.tensor(4.0)).item())
    # The checkpoints lie beside the store, one per search epoch, and hold the search state.
    checkpoints = tiny.parent / "study.checkpoints" / "ofb"
    state = load_state(checkpoints / "seed=0_ofb_search_epoch=002.safetensors")
    assert int(state["step"]["step"]) == trials["seed=0/ofb/search/epoch=002"].final["step"]
    assert set(state["trainer"]["optimizers"]) == {"weights", "arch", "scores"}
    assert len(list(checkpoints.glob("*.safetensors"))) == 4 * TINY["search_epochs"]


def test_summary_rows_table_and_plots(tiny):
    out = tiny.parent / "report"
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == list(VARIANTS)
    for row in rows:
        assert {"variant", "target_flops", "flops", "params", "mean_acc", "std_acc",
                "n"} <= set(row)
        assert row["n"] == 1 and row["std_acc"] == 0.0
    with Store(tiny, readonly=True) as store:
        ofb = store.trials("ofb", unit="seed=0/ofb/finetune")[0]
    assert rows[0]["mean_acc"] == ofb.final["test_acc"] and rows[0]["flops"] == ofb.final["flops"]
    table = (out / "summary.md").read_text()
    assert "| importance-only |" in table and "every unit's α one-hot" in table
    for name in ("alpha_entropy.png", "flops_during_search.png", "accuracy_vs_flops.png"):
        assert (out / name).stat().st_size > 1000


def test_study_is_deterministic(tiny, tmp_path):
    again = tmp_path / "again.sqlite"
    run_in_process(OnceForBoth, again, TINY, out=tmp_path / "report")
    with Store(tiny, readonly=True) as a, Store(again, readonly=True) as b:
        assert outcome(a) == outcome(b)
    assert summary_rows(tmp_path / "report") == summary_rows(tiny.parent / "report")


def test_search_that_ends_early_hands_its_epochs_to_fine_tuning(tmp_path):
    # One candidate per unit: every choice is made from the start, so the search ends after
    # its first epoch and the fine-tuning trains the second search epoch too.
    options = {**TINY, "embed_ratios": (1.0,), "attn_ratios": (1.0,), "mlp_ratios": (1.0,),
               "target_ratio": 1.0, "variants": ("ofb",)}
    path = tmp_path / "study.sqlite"
    run_in_process(OnceForBoth, path, options)
    with Store(path, readonly=True) as store:
        second = store.trials("ofb", unit="seed=0/ofb/search/epoch=002")[0]
        tuned = store.trials("ofb", unit="seed=0/ofb/finetune")[0]
    assert second.config["trained"] is False and second.epochs == []
    assert tuned.config["searched_epochs"] == 1 and tuned.config["finetune_epochs"] == 2
    assert tuned.config["all_frozen"] and len(tuned.epochs) == 2
    assert tuned.final["flops_gap"] == 0.0 and tuned.config["widths"]["embed"] == 8


@pytest.mark.parametrize("argv, message", [
    (["--target-ratio", "1.5"], "target_ratio 1.5 must be in (0, 1]: a FLOPs target above the "
                                "parent's"),
    (["--target-ratio", "0.05"], "is below the smallest candidate network's"),
    (["--mlp-ratios", "0.5,0.25,1"], "argument 'mlp_ratios' must be strictly increasing"),
    (["--attn-ratios", "0.5,0.5"], "argument 'attn_ratios' must be strictly increasing"),
    (["--embed-ratios", "0,0.5,1"], "argument 'embed_ratios' must hold keep ratios in (0, 1]"),
    (["--mlp-ratios", "0.5,1.5"], "argument 'mlp_ratios' must hold keep ratios in (0, 1]"),
    (["--patch-size", "3"], "patch_size 3 does not divide the 8x8 images of digits"),
    (["--variants", "ofb,lottery"], "variants must be distinct names among"),
    (["--embed-dim", "30", "--num-heads", "4"], "embed_dim 30 must be divisible by num_heads 4"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    err = _one_line_error(capsys, ["ofb", *argv, "--out", str(tmp_path / "out")])
    assert err.startswith("sparsenas: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_study_checks_the_config_against_the_data_before_recording_it(tmp_path):
    strategy = OnceForBoth(from_flat(OnceForBoth.Config, {**TINY, "patch_size": 3}))
    with Store(tmp_path / "study.sqlite") as store:
        with pytest.raises(ValueError, match="patch_size 3 does not divide the 8x8 images"):
            Study(strategy, store, progress=False).run()
        assert store.studies() == []


def test_cifar10_from_local_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        _write_cifar_batch(root / name, rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8),
                           [j % 10 for j in range(30)])
    common = ["ofb", "--dataset", "cifar10", "--data-root", str(tmp_path),
              *flags({**TINY, "search_epochs": 1, "variants": ("ofb", "uniform")})]
    err = _one_line_error(capsys, [*common, "--patch-size", "5", "--out", str(tmp_path / "bad")])
    assert "patch_size 5 does not divide the 32x32 images of cifar10" in err
    assert main([*common, "--patch-size", "8", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert [(r["variant"], r["n"]) for r in rows] == [("ofb", 1), ("uniform", 1)]
    parent = ViT((3, 32, 32), 10, patch_size=8, embed_dim=8, depth=1, num_heads=2, mlp_ratio=2.0)
    assert rows[1]["target_flops"] == pytest.approx(0.6 * parent.flops())


def test_measure_latencies():
    small = ViT((1, 8, 8), 10, embed_dim=8, depth=1, num_heads=2).train()
    large = ViT((1, 8, 8), 10, embed_dim=64, depth=4, num_heads=2).eval()
    seconds = measure_latencies([small, large], torch.zeros(64, 1, 8, 8), min_run_time=0.02)
    assert 0 < seconds[0] < seconds[1] < 1
    assert small.training and not large.training  # modes restored
    with pytest.raises(ValueError, match="threads and rounds must be >= 1"):
        measure_latencies([small], torch.zeros(4, 1, 8, 8), rounds=0)


# Wide candidates die in the first epoch (strong arch learning rate, many checks), so the run
# is killed with shrunk shapes in its checkpoints.
RESUMED = {**TINY, "search_epochs": 4, "variants": ("ofb", "uniform"), "arch_lr": 0.3,
           "checks_per_epoch": 8, "batch_size": 64}


@pytest.mark.slow  # starts the CLI twice (interpreter and torch start-up dominate)
def test_kill_9_during_search_then_resume(tmp_path):
    reference = tmp_path / "reference.sqlite"
    run_in_process(OnceForBoth, reference, RESUMED, out=tmp_path / "reference")
    first = load_state(tmp_path / "reference.checkpoints" / "ofb" /
                       "seed=0_ofb_search_epoch=001.safetensors")
    assert first["model"]["units.embed.scores"].shape[0] < 8 or \
        first["model"]["units.mlp_0.scores"].shape[0] < 16, "no shrinking in the first epoch"

    store_path = tmp_path / "study.sqlite"
    argv = ["ofb", *flags(RESUMED), "--out", str(tmp_path / "out"), "--store", str(store_path)]
    victim = cli(*argv)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        if store_path.exists():
            try:
                with Store(store_path, readonly=True) as store:
                    finished = store.finished_units("ofb") if store.study("ofb") else set()
            except Exception:  # the victim may be creating the schema right now
                finished = set()
            if "seed=0/ofb/search/epoch=001" in finished:
                break
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with Store(store_path, readonly=True) as store:
        done_before = store.finished_units("ofb")
    assert "seed=0/ofb/finetune" not in done_before, "the run was not interrupted mid-search"

    resumed = cli(*argv, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    with Store(store_path, readonly=True) as store, Store(reference, readonly=True) as ref:
        assert outcome(store) == outcome(ref)
    assert summary_rows(tmp_path / "out") == summary_rows(tmp_path / "reference")

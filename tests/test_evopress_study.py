"""The evopress strategy: a tiny study end to end per mode, the exact budget of every configuration
the study evaluated (read back from the store, counted from the database's masks), determinism,
bad input as one-line CLI errors, and kill -9 / resume through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from study_helpers import cli, flags, kill_after, run_in_process

from sparsenas.cli import main
from sparsenas.config import from_flat
from sparsenas.methods.evopress.database import LevelDatabase
from sparsenas.store import Store, load_checkpoint
from sparsenas.strategies.evopress import EvoPress, EvoPressConfig

TINY = {"embed_width": 16, "blocks": 3, "heads": 2, "lm_steps": 20, "offspring": 4,
        "generations": 2, "stage_survivors": [2, 1], "stage_examples": [8, 16],
        "calibration": 16, "eval_examples": 16, "random_count": 3, "num_levels": 2}
TARGETS = {"sparsity": 0.6, "depth": 1, "bits": 3}


def _evaluated(trials) -> list[str]:
    """Every configuration the study evaluated, encoded."""
    configurations = []
    for t in trials:
        if t.kind == "generation":
            for stage in t.config["stages"]:
                configurations += stage["candidates"]
        elif t.kind == "final":
            configurations.append(t.config["levels_encoded"])
            configurations += t.config.get("candidates", [])
    return configurations


def _costs(mode: str, options: dict, store_path, trials) -> set[int]:
    """The budget of each evaluated configuration, counted independently of the level space:
    non-zeros of the database's masks, dropped blocks, or bits x weights."""
    config = from_flat(EvoPressConfig, options)
    data = config.data.load()
    model = config.build_model((data.input_shape, data.num_classes))
    work = store_path.parent / f"{store_path.stem}.evopress.evopress"
    model.load_state_dict(load_checkpoint(work / "dense.safetensors")[0])
    units = trials["dense"].config["units"]
    costs = set()
    database = None if mode == "depth" else LevelDatabase.open(work / "database.safetensors",
                                                               model, mode)
    for encoded in _evaluated(trials.values()):
        levels = [int(v) for v in encoded.split(",")]
        if mode == "depth":
            costs.add(sum(levels))
        elif mode == "sparsity":
            costs.add(sum(int(database.mask(u, v).sum()) for u, v in zip(units, levels)))
        else:
            costs.add(sum(v * model.get_submodule(u).weight.numel() for u, v in zip(units, levels)))
    return costs


@pytest.mark.parametrize("mode", ["sparsity", "depth", "bits"])
def test_tiny_study_on_the_gpt_keeps_the_budget_exactly(tmp_path, one_thread, mode):
    options = {**TINY, "mode": mode, "target": TARGETS[mode]}
    path = tmp_path / "study.sqlite"
    out = tmp_path / "out"
    results, table = run_in_process(EvoPress, path, options, out=out)
    with Store(path, readonly=True) as store:
        trials = {t.key: t for t in store.trials("evopress")}
    assert set(trials) >= {"dense", "generation=0001", "generation=0002", "final/evopress",
                           "final/uniform", "final/random"}
    assert {"sparsity": "final/owl", "depth": "final/block-importance", "bits": "final/uniform"}[
        mode] in trials
    # generations chain: parent links, stored state feeds the next generation
    assert trials["generation=0002"].parent == "generation=0001"
    assert trials["generation=0002"].config["parent"] == trials["generation=0001"].config["levels"]
    assert trials["final/evopress"].config["levels_encoded"] == \
        trials["generation=0002"].config["levels"]
    # 3 blocks with one dropped have only 2 other configurations
    assert len(trials["generation=0001"].config["offspring"]) == (
        2 if mode == "depth" else TINY["offspring"])
    configurations = _evaluated(trials.values())
    assert len(configurations) > 10
    costs = _costs(mode, options, path, trials)
    assert len(costs) == 1, f"budget not exact: {sorted(costs)}"
    budget = trials["dense"].final["budget"]  # the space's cost: -non-zeros for sparsity
    assert costs == {-budget if mode == "sparsity" else budget}
    if mode == "depth":
        assert costs == {1}
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["rows"]:
        assert {"mode", "target", "method", "fitness", "perplexity"} <= set(row)
        assert row["mode"] == mode and row["target"] == TARGETS[mode]
    assert {r["method"] for r in summary["rows"]} >= {"dense", "evopress", "uniform", "random"}
    assert (out / "fitness.png").stat().st_size > 0 and (out / "levels.png").stat().st_size > 0
    if mode != "depth":
        assert trials["dense"].final["database_bytes"] > 0


def test_digits_mlp_sparsegpt_deterministic_and_heldout_metrics(tmp_path, one_thread):
    options = {**TINY, "model": "mlp", "dataset": "digits", "widths": [32, 32], "epochs": 3,
               "pruner": "sparsegpt", "target": 0.7}
    first, table = run_in_process(EvoPress, tmp_path / "a" / "study.sqlite", options)
    second, again = run_in_process(EvoPress, tmp_path / "b" / "study.sqlite", options)
    assert first == second and table == again
    final = {key: value for key, value in first.items() if key.startswith("final/")}
    for _, kind, _, _, _, config, outcome, _ in final.values():
        assert kind == "final" and 0.0 <= outcome["accuracy"] <= 1.0
        assert outcome["fitness"] == outcome["kl"] >= 0.0
    # the dense row's accuracy is the trained model's own, recomputed here in plain PyTorch
    config = from_flat(EvoPressConfig, options)
    data = config.data.load()
    model = config.build_model((data.input_shape, data.num_classes))
    work = tmp_path / "a" / "study.evopress.evopress"
    model.load_state_dict(load_checkpoint(work / "dense.safetensors")[0])
    with torch.no_grad():
        x, y = data.x_test[:TINY["eval_examples"]], data.y_test[:TINY["eval_examples"]]
        accuracy = float((model(x).argmax(1) == y).double().mean())
    assert first["dense"][6]["accuracy"] == pytest.approx(accuracy)
    assert "| evopress |" in table and "| owl |" in table


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparsenas: error: ") and "\n" not in err
    return err


def _argv(tmp_path, *extra):
    return ["evopress", *flags(TINY), "--out", str(tmp_path / "out"), *extra]


def test_bad_input_one_line_errors(tmp_path, capsys, one_thread):
    assert "outside what the sparsity levels can reach" in _error(
        capsys, _argv(tmp_path, "--target", "1.5"))
    assert "delta" in _error(capsys, _argv(tmp_path, "--target", "0.999"))
    assert "outside what the levels can reach" in _error(
        capsys, _argv(tmp_path, "--mode", "bits", "--target", "7"))
    assert "num_dropped" in _error(capsys, _argv(tmp_path, "--mode", "depth", "--target", "3"))
    assert "at least two units" in _error(
        capsys, _argv(tmp_path, "--model", "mlp", "--dataset", "digits", "--widths", "16"))
    assert "smaller than the first racing stage" in _error(
        capsys, _argv(tmp_path, "--calibration", "4"))
    assert not (tmp_path / "out").exists()


def test_database_for_another_mode_or_model_is_refused_and_kept(tmp_path, capsys, one_thread):
    first = tmp_path / "first"
    assert main(["evopress", *flags(TINY), "--mode", "bits", "--target", "3", "--out",
                 str(first)]) == 0
    capsys.readouterr()
    database = first / "study.evopress.evopress" / "database.safetensors"
    before = database.read_bytes()
    err = _error(capsys, _argv(tmp_path, "--database", str(database)))
    assert "built for mode 'bits', not 'sparsity'" in err
    err = _error(capsys, _argv(tmp_path, "--database", str(database), "--mode", "bits",
                               "--target", "3", "--seed", "1"))
    assert "built for another model" in err
    assert database.read_bytes() == before
    with Store(first / "study.sqlite", readonly=True) as store:
        assert len(store.finished_units("evopress")) == len(
            EvoPress(from_flat(EvoPressConfig, {**TINY, "mode": "bits", "target": 3})).plan())


@pytest.mark.slow  # starts the CLI twice (interpreter and torch start-up dominate)
def test_kill_9_mid_search_then_resume(tmp_path):
    options = {**TINY, "generations": 6}
    reference, table = run_in_process(EvoPress, tmp_path / "ref" / "study.sqlite", options)
    store_path = tmp_path / "study.sqlite"
    argv = ["evopress", *flags(options), "--out", str(tmp_path / "out"), "--store",
            str(store_path)]
    finished = kill_after(cli(*argv), store_path, "evopress", "generation=0002")
    assert "generation=0002" in finished and "final" not in finished, finished
    resumed = cli(*argv, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    with Store(store_path, readonly=True) as store:
        after = {t.key: (t.config, t.final, t.parent, t.generation)
                 for t in store.trials("evopress")}
    expected = {key: (value[5], value[6], value[3], value[4]) for key, value in reference.items()}
    assert after == expected
    assert after["final/evopress"][0]["levels_encoded"] == \
        expected["generation=0006"][0]["levels"]
    assert (tmp_path / "out" / "summary.md").read_text() == table


def test_digits_vit_depth_and_bits(tmp_path, one_thread):
    for mode, target in (("depth", 1), ("bits", 4)):
        options = {**TINY, "model": "vit", "dataset": "digits", "epochs": 1, "mode": mode,
                   "target": target}
        path = tmp_path / mode / "study.sqlite"
        run_in_process(EvoPress, path, options)
        with Store(path, readonly=True) as store:
            trials = {t.key: t for t in store.trials("evopress")}
        costs = _costs(mode, options, path, trials)
        assert costs == {1 if mode == "depth" else trials["dense"].final["budget"]}
        assert "accuracy" in trials["final/evopress"].final

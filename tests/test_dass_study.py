"""The DASS study: a tiny study end to end (three-phase search, dense-DARTS search, HYDRA
evaluation of three genotypes), determinism, training checkpoints that resume optimisers exactly,
the bad-input table as one-line CLI errors, and kill -9 during the search resuming to the
genotype of an uninterrupted run."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from study_helpers import cli, flags, kill_after, results, run_in_process

from sparsenas.cli import main
from sparsenas.config import from_flat
from sparsenas.data import DATASETS, load_synthetic
from sparsenas.models.darts import DARTS_V2
from sparsenas.spaces.cells import encode_genotype, param_ops
from sparsenas.store import Store, load_state
from sparsenas.strategies.dass import Dass
from sparsenas.study import StudyContext

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(channels=2, cells=3, nodes=1, dense_epochs=1, prune_epochs=1, finetune_epochs=1,
            warmup_epochs=1, keep=0.2, arch_lr=0.05, eval_channels=2,
            eval_cells=3, epochs=1, hydra_prune_epochs=1, hydra_finetune_epochs=1,
            keeps=(0.05,), seeds=(0,), batch_size=256)

SEARCH_UNITS = 2 * 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("dass") / "study.sqlite"
    out = path.parent / "report"
    found, table = run_in_process(Dass, path, TINY, out=out)
    return path, out, found, table


def test_tiny_study_end_to_end(reference):
    path, out, found, table = reference
    with Store(path, readonly=True) as store:
        trials = store.trials("dass")
    search = {t.key: t for t in trials if t.kind == "search"}
    assert sorted(search) == [f"search/{m}/epoch={e:03d}" for m in ("darts-here", "dass")
                              for e in range(3)]
    dass = [search[f"search/dass/epoch={e:03d}"] for e in range(3)]
    assert [t.config["phase"] for t in dass] == ["dense", "prune", "finetune"]
    assert [t.config["update_arch"] for t in dass] == [False, True, True]
    # the warm-up epoch leaves α at its initialisation; the α epochs move it
    assert dass[0].final["alphas_normal"] != dass[1].final["alphas_normal"]
    assert dass[0].final["kept_fraction"] == 1.0
    assert 0.1 < dass[1].final["kept_fraction"] <= 0.3  # keep 0.2, at least one weight per layer
    here = [search[f"search/darts-here/epoch={e:03d}"] for e in range(3)]
    assert all(t.config["phase"] == "dense" and t.final["kept_fraction"] == 1.0 for t in here)
    checkpoints = path.with_name("study.sqlite.checkpoints") / "dass"
    assert sorted(p.name for p in (checkpoints / "dass").iterdir()) == [
        f"epoch={e:03d}.safetensors" for e in range(3)]
    saved = load_state(checkpoints / "dass" / "epoch=001.safetensors")
    assert (saved["phase"], saved["keep"], saved["epoch"]) == ("prune", 0.2, 1)
    assert set(saved["trainer"]["optimizers"]) == {"scores", "arch"}

    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {"genotype", "keep", "mean_acc", "std_acc", "n", "param_ops"} <= set(rows[0])
    assert [(r["genotype"], r["keep"]) for r in rows] == [
        (g, k) for g in ("dass", "darts-v2", "darts-here") for k in (1.0, 0.05)]
    assert all(r["n"] == 1 and 0 <= r["mean_acc"] <= 1 and r["std_acc"] is None for r in rows)
    by_genotype = {r["genotype"]: r for r in rows}  # the last row of each: kept fraction 0.05
    assert by_genotype["darts-v2"]["param_ops"] == param_ops(DARTS_V2) == 6
    assert by_genotype["darts-v2"]["genotype_string"] == encode_genotype(DARTS_V2)
    assert by_genotype["dass"]["genotype_string"] == dass[-1].final["genotype"]
    finals = {t.config["genotype"]: t for t in trials
              if t.kind == "final" and t.config["keep"] == 0.05}
    assert all(t.final["kept_fraction"] < 0.1 for t in finals.values())
    assert by_genotype["dass"]["mean_acc"] == finals["dass"].final["test_acc"]
    assert "kept fraction 0.05: DASS" in table
    for name in ("alphas.png", "cells_dass.png", "cells_darts-here.png", "cells_darts-v2.png",
                 "accuracy_vs_keep.png"):
        assert (out / name).stat().st_size > 0


def test_study_is_deterministic(reference, tmp_path):
    _, _, found, table = reference
    again, again_table = run_in_process(Dass, tmp_path / "study.sqlite", TINY)
    assert again == found
    assert again_table == table


def test_second_order_search_epoch(tmp_path):
    """One pruning epoch with the unrolled α gradient: α moves, the weights stay frozen, and the
    epoch's checkpoint holds the phase."""
    strategy = Dass(from_flat(Dass.Config, {**TINY, "order": "second", "dense_epochs": 0,
                                            "finetune_epochs": 0, "warmup_epochs": 0}))
    unit = strategy.plan()[0]
    assert unit.key == "search/dass/epoch=000"
    ctx = StudyContext(strategy.config, "dass", store_path=tmp_path / "study.sqlite")
    initial = strategy._supernet(ctx.data)
    trial, = strategy.run_unit(unit, ctx)
    assert trial.config["phase"] == "prune" and trial.config["update_arch"]
    assert trial.final["alphas_normal"] != torch.softmax(initial.alphas_normal, -1).tolist()
    saved = load_state(
        tmp_path / "study.sqlite.checkpoints" / "dass" / "dass" / "epoch=000.safetensors")
    assert saved["phase"] == "prune"
    weights = saved["model"]
    assert torch.equal(weights["stem.0.weight"], initial.stem[0].weight)
    assert not torch.equal(weights["stem.0.scores"], initial.stem[0].scores)


def _error(capsys, *argv) -> str:
    assert main(["dass", *argv]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


BAD_INPUT = [
    (["--keep", "0"], "keep must be a kept fraction in (0, 1], got 0"),
    (["--keep", "1.5"], "keep must be a kept fraction in (0, 1], got 1.5"),
    (["--keeps", "0.1,-0.2"], "keeps must be a kept fraction in (0, 1], got -0.2"),
    (["--genotype", "normal=sep_conv_3x3@0"], "genotype 'normal=sep_conv_3x3@0': expected"),
    (["--genotype", "normal=conv_9x9@0,skip_connect@1|2;reduce=max_pool_3x3@0,skip_connect@1|2"],
     "unknown operation 'conv_9x9'"),
    (["--cells", "0"], "cells must be >= 1, got 0"),
    (["--nodes", "0"], "nodes must be >= 1, got 0"),
    (["--eval-cells", "0"], "eval_cells must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_is_a_one_line_error(capsys, tmp_path, argv, message):
    err = _error(capsys, *argv, "--out", str(tmp_path))
    assert err.startswith("sparsenas: error: ") and message in err


def test_input_size_the_reduction_cells_cannot_handle(capsys, tmp_path):
    if "dass-6x6" not in DATASETS:
        DATASETS.register("dass-6x6", functools.partial(load_synthetic, num_examples=40,
                                                        input_shape=(1, 6, 6)))
    err = _error(capsys, *flags(TINY), "--dataset", "dass-6x6", "--out", str(tmp_path))
    assert err == ("sparsenas: error: input size 6x6 of dataset 'dass-6x6' cannot pass the 2 "
                   "reduction cells of --cells 3: height and width must be multiples of 4")


@pytest.mark.slow  # starts the CLI twice (interpreter and torch start-up dominate)
def test_kill_9_during_search_resumes_to_the_same_genotype(reference, tmp_path):
    _, _, found, table = reference
    store_path = tmp_path / "study.sqlite"
    argv = ["dass", *flags(TINY), "--out", str(tmp_path / "out"), "--store", str(store_path)]
    victim = cli(*argv)
    before = kill_after(victim, store_path, "dass", "search/dass/epoch=001")  # while pruning
    assert 2 <= len(before) < SEARCH_UNITS, "the run was not interrupted during the search"
    resumed = cli(*argv, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    with Store(store_path, readonly=True) as store:
        assert results(store, "dass") == found
    assert (tmp_path / "out" / "summary.md").read_text() == table


def test_presets_build():
    quick = from_flat(Dass.Config, Dass.presets["quick"])
    assert quick.search_epochs == 3 and quick.keeps == (0.1, 0.05, 0.01)
    default = Dass.Config()
    assert (default.dense_epochs, default.prune_epochs, default.finetune_epochs) == (10, 5, 5)
    assert len(Dass(default).plan()) == 2 * 20 + 3 * 3

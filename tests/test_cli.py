"""The generated CLI: sub-commands and flags from the strategies' configs, presets, report / list /
migrate on any study, and every bad input as one line, a non-zero exit and an unchanged store."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from test_store import write_store_0_1_0

from sparsenas.cli import build_parser, main
from sparsenas.config import flat_options
from sparsenas.store import LEGACY_STUDY, Store
from sparsenas.strategies import STRATEGIES

TINY = ["--widths", "8,8", "--sparsities", "0.5", "--num-candidates", "2", "--num-random", "1",
        "--seeds", "0", "--search-epochs", "1", "--epochs", "1", "--batch-size", "256"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny random-search study: (out directory, store path, summary.md text)."""
    out = tmp_path_factory.mktemp("cli") / "out"
    assert main(["random-search", *TINY, "--out", str(out)]) == 0
    return out, out / "study.sqlite", (out / "summary.md").read_text()


def _one_line_error(capsys, argv, code=1) -> str:
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    else:
        assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("random-search", "evolution", "report", "list", "bench", "info", "migrate"):
        assert command in out


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_flags_come_from_the_config(capsys, name):
    strategy = STRATEGIES.get(name)
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in flat_options(strategy.Config):
        assert f"--{option.name.replace('_', '-')}" in out
        assert " ".join(option.help.split()[:4]) in out  # help text from the field's doc
    for flag in ("--out", "--store", "--resume", "--preset", "--study"):
        assert flag in out
    assert "quick" in strategy.presets


def test_presets_and_overrides():
    parser = build_parser()
    from sparsenas.cli import strategy_config

    args = parser.parse_args(["random-search", "--preset", "quick", "--epochs", "7"])
    config = strategy_config(args.strategy, args)
    assert config.training.epochs == 7  # the flag wins over the preset
    assert config.num_candidates == STRATEGIES.get("random-search").presets["quick"][
        "num_candidates"]
    args = parser.parse_args(["evolution"])
    assert strategy_config(args.strategy, args) == STRATEGIES.get("evolution").Config()


@pytest.mark.parametrize("argv, message", [
    (["random-search", "--epochs", "x"], "expected an integer"),
    (["random-search", "--frobnicate"], "unrecognized arguments"),
    (["random-search", "--optimizer", "lbfgs"], "invalid choice"),
    (["random-search", "--budget", "network"], "invalid choice"),
    (["bench-everything"], "invalid choice"),
])
def test_usage_errors(capsys, argv, message):
    assert message in _one_line_error(capsys, argv, code=2)


@pytest.mark.parametrize("argv, message", [
    (["--sparsities", "0.5,1.0"], "sparsities must be in [0, 1)"),
    (["--sparsities", "-0.1"], "sparsities must be in [0, 1)"),
    (["--sparsities", "0.5,0.5"], "sparsities must be distinct"),
    (["--sparsities", "0.5,0.50"], "sparsities must be distinct"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--seeds", "9223372036854775808"], "signed 64-bit integer"),
    (["--seeds", "-1"], "non-negative"),
    (["--device", "foo"], "device must be auto, cpu, cuda or cuda:N, got 'foo'"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["--lr", "-1"], "lr must be positive"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "mnist", "--data-root", "/nonexistent/mnist"], "does not exist"),
    (["--dataset", "cifar10"], "--data-root"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--proxy", "no-such-proxy"], "unknown proxy 'no-such-proxy'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    err = _one_line_error(capsys, ["random-search", *argv, "--out", str(tmp_path / "out")])
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


def test_unknown_strategy_name_in_a_store(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.create_study("x", "no-such-strategy", {})
    assert "unknown strategy 'no-such-strategy'" in _one_line_error(
        capsys, ["report", "--store", str(path)])


def test_same_name_other_config_leaves_the_store_unchanged(tmp_path, capsys, finished):
    out, store_path, _ = finished
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(store_path.read_bytes())
    before = copy.read_bytes()
    err = _one_line_error(capsys, ["random-search", *TINY, "--epochs", "2", "--store", str(copy),
                                   "--out", str(tmp_path / "o"), "--resume"])
    assert "different configuration (differs in: epochs)" in err
    assert copy.read_bytes() == before


@pytest.mark.parametrize("kind", ["text", "directory", "truncated"])
@pytest.mark.parametrize("command", ["random-search", "report", "list"])
def test_store_that_is_not_a_store(tmp_path, capsys, finished, kind, command):
    path = tmp_path / "bad.sqlite"
    if kind == "text":
        path.write_text("not a database\n" * 100)
    elif kind == "directory":
        path.mkdir()
    else:
        data = finished[1].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    argv = [command, "--store", str(path)]
    if command == "random-search":
        argv += [*TINY, "--out", str(tmp_path / "o")]
    err = _one_line_error(capsys, argv)
    assert str(path) in err or "store" in err


def test_report_never_writes_the_store(tmp_path, capsys, finished):
    # An SQLite file with no study: report says so and leaves it as it was.
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    assert "holds no study" in _one_line_error(capsys, ["report", "--store", str(empty)])
    assert empty.stat().st_size == 0 and not list(tmp_path.glob("empty.sqlite-*"))
    # A read-only store (file and directory) reports to another directory.
    _, store_path, table = finished
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_store = ro_dir / "study.sqlite"
    ro_store.write_bytes(store_path.read_bytes())
    before = ro_store.read_bytes()
    os.chmod(ro_store, 0o444)
    os.chmod(ro_dir, 0o555)
    try:
        assert main(["report", "--store", str(ro_store), "--out", str(tmp_path / "r")]) == 0
    finally:
        os.chmod(ro_dir, 0o755)
        os.chmod(ro_store, 0o644)
    assert ro_store.read_bytes() == before
    assert (tmp_path / "r" / "summary.md").read_text() == table
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["method"] == "random-search" and summary["rows"]


def test_read_only_out_directory(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        out = Path("/sys/kernel")
    else:
        out = tmp_path / "ro"
        out.mkdir()
        os.chmod(out, 0o555)
    try:
        err = _one_line_error(capsys, ["random-search", *TINY, "--out", str(out)])
    finally:
        if os.geteuid() != 0:
            os.chmod(out, 0o755)
    assert "is not writable" in err


def test_unwritable_out_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _one_line_error(capsys, ["random-search", *TINY, "--out", str(blocker / "out")])
    assert "is not writable" in err


def test_report_list_and_migrate(tmp_path, capsys, finished):
    out, store_path, table = finished
    assert main(["report", "--store", str(store_path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "summary.md").read_text() == table
    assert (tmp_path / "r" / "convergence.png").stat().st_size > 0
    assert table in capsys.readouterr().out
    assert main(["list", "--store", str(store_path)]) == 0
    listing = capsys.readouterr().out
    assert "| random-search | random-search | 2 / 2 |" in listing
    assert "several studies" not in listing
    assert "no study named 'nope'" in _one_line_error(
        capsys, ["report", "--store", str(store_path), "--study", "nope"])
    # A 0.1.0 store: report refuses with what to do; migrate upgrades it; report then works.
    old = tmp_path / "old.sqlite"
    write_store_0_1_0(old, {"epochs": 3}, [("u", "t")])
    assert "sparsenas migrate --store" in _one_line_error(capsys, ["report", "--store", str(old)])
    assert main(["migrate", "--store", str(old)]) == 0
    assert f"migrated from sparsenas 0.1.0; studies: {LEGACY_STUDY}" in capsys.readouterr().out
    assert main(["migrate", "--store", str(old)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert main(["info"]) == 0
    assert "ops (cpu / cuda):" in capsys.readouterr().out


def test_bench_runs_from_a_checkout(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no benchmarks here; the package's checkout may have them
    import sparsenas

    checkout = Path(sparsenas.__file__).resolve().parent.parent
    if (checkout / "benchmarks" / "run.py").is_file():
        assert main(["bench", "--only", "no-such-benchmark"]) != 0
    else:
        assert "source repository" in _one_line_error(capsys, ["bench", "--quick"])

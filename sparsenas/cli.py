"""The ``sparsenas`` command line.

    sparsenas <strategy> [options]      run (or --resume, or join) a study; one sub-command per
                                        registered strategy, its flags generated from the
                                        strategy's config dataclass
    sparsenas report --store PATH       summary, table and plots of a study in a store
    sparsenas list --store PATH         the studies in a store
    sparsenas migrate --store PATH      upgrade a store written by sparsenas 0.1.0
    sparsenas bench [options]           run the benchmarks (from a source checkout)
    sparsenas info                      what runs natively in this installation

Every error (a bad option, an unknown name, a missing data directory, a store that is not one or
holds another study under the same name, an output directory that cannot be written) is reported
on one line with a non-zero exit status, before any work is done where it can be checked up front.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _scalar(kind: type, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None


def _sequence(kind: type):
    def parse(text: str) -> tuple:
        values = tuple(_scalar(kind, v.strip()) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return values

    return parse


def _argument(option) -> tuple[list[str], dict[str, Any]]:
    """argparse spelling of one config option: the flag and its keyword arguments."""
    flag = "--" + option.name.replace("_", "-")
    kind = option.type
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    default = option.default
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS,
                              "help": f"{option.help} (default: {shown})"}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        kwargs.update(type=_sequence(item), metavar=f"{item.__name__.upper()},...")
    elif kind in (int, float):
        kwargs.update(type=lambda text, kind=kind: _scalar(kind, text),
                      metavar=kind.__name__.upper())
    else:
        kwargs["metavar"] = "NAME" if option.choices is None else None
    if option.choices:
        kwargs["choices"] = option.choices
    return [flag], kwargs


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type,
                         own_group: str) -> None:
    """One flag per option of ``config_class``, grouped by piece (the config's own options under
    ``own_group``); an option not given stays out of the parsed namespace."""
    from sparsenas.config import flat_options

    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in flat_options(config_class):
        group_name = option.piece or own_group
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        flags, kwargs = _argument(option)
        groups[group_name].add_argument(*flags, **kwargs)


def _add_strategy(commands: argparse._SubParsersAction, strategy: type) -> None:
    p = commands.add_parser(strategy.name, help=strategy.description,
                            description=strategy.description[0].upper() +
                            strategy.description[1:] + ".")
    add_config_arguments(p, strategy.Config, strategy.name)
    study = p.add_argument_group("study")
    study.add_argument("--preset", default=None,
                       help=f"start from a named option set ({', '.join(strategy.presets)}); "
                            f"flags given here override it")
    study.add_argument("--out", type=Path, default=Path("runs") / strategy.name,
                       help="directory of the summary, tables, plots and exports")
    study.add_argument("--store", type=Path, default=None,
                       help="the SQLite store (default: OUT/study.sqlite); several studies may "
                            "share one")
    study.add_argument("--study", default=strategy.name,
                       help="the study's name in the store")
    study.add_argument("--resume", action="store_true",
                       help="continue the study in the store (also: join it as another worker)")
    p.set_defaults(handler=_run_study, strategy=strategy)


def strategy_config(strategy: type, args: argparse.Namespace):
    """``strategy``'s config from parsed flags over the preset ``args.preset`` (if any)."""
    from sparsenas.config import flat_options, from_flat

    names = {o.name for o in flat_options(strategy.Config)}
    given = {k: v for k, v in vars(args).items() if k in names}
    preset: dict[str, Any] = {}
    if args.preset is not None:
        if args.preset not in strategy.presets:
            raise ValueError(f"unknown preset {args.preset!r} for {strategy.name}; known: "
                             f"{', '.join(strategy.presets)}")
        preset = strategy.presets[args.preset]
    return from_flat(strategy.Config, {**preset, **given})


def _run_study(args: argparse.Namespace) -> int:
    import torch

    from sparsenas.report.io import check_writable, write_report
    from sparsenas.store import Store, StoreError
    from sparsenas.study import Study

    strategy = args.strategy(strategy_config(args.strategy, args))
    config = strategy.config
    torch.set_num_threads(config.runtime.threads)
    start = time.perf_counter()
    data = config.data.load()  # a missing data directory is reported before any file is written
    strategy.check_data(data)  # and so is a config that does not fit the data
    out = check_writable(args.out)
    store_path = args.store or out / "study.sqlite"
    with Store(store_path) as store:
        if not args.resume and store.study(args.study) is not None:
            raise StoreError(f"store {str(store_path)!r} already holds a study named "
                             f"{args.study!r}: pass --resume to continue it, or choose another "
                             f"--study / --out / --store")
        checkpoints = out / "checkpoints" if config.runtime.save_models else None
        Study(strategy, store, name=args.study, checkpoint_dir=checkpoints, data=data).run()
        paths = write_report(store, args.study, strategy, out)
    print(paths["table"].read_text())
    print(f"study {args.study!r} finished in {time.perf_counter() - start:.1f} s; store: "
          f"{store_path}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _study_info(store, requested: str | None):
    studies = store.studies()
    if requested is not None:
        info = store.study(requested)
        if info is None:
            raise ValueError(f"store {str(store.path)!r} holds no study named {requested!r}; it "
                             f"holds: {', '.join(s.name for s in studies) or 'none'}")
        return info
    if not studies:
        raise ValueError(f"store {str(store.path)!r} holds no study")
    if len(studies) > 1:
        raise ValueError(f"store {str(store.path)!r} holds several studies "
                         f"({', '.join(s.name for s in studies)}): choose one with --study")
    return studies[0]


def _strategy_for(info):
    from sparsenas.config import from_flat
    from sparsenas.strategies import STRATEGIES

    strategy = STRATEGIES.get(info.strategy)
    return strategy(from_flat(strategy.Config, info.config))


def _report(args: argparse.Namespace) -> int:
    from sparsenas.report.io import write_report
    from sparsenas.store import Store

    with Store(args.store, readonly=True) as store:
        info = _study_info(store, args.study)
        paths = write_report(store, info.name, _strategy_for(info), args.out or args.store.parent)
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from sparsenas.store import Store

    with Store(args.store, readonly=True) as store:
        studies = store.studies()
        if not studies:
            print(f"{args.store}: no studies")
            return 0
        print("| study | strategy | units finished | trials | created |")
        print("|---|---|---|---|---|")
        for info in studies:
            planned = len(_strategy_for(info).plan())
            finished = len(store.finished_units(info.name))
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created_at))
            print(f"| {info.name} | {info.strategy} | {finished} / {planned} | "
                  f"{len(store.trials(info.name))} | {created} |")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from sparsenas.store import Store

    if not args.store.is_file():
        raise ValueError(f"store {str(args.store)!r} does not exist")
    with Store(args.store) as store:
        names = [s.name for s in store.studies()]
        state = "migrated from sparsenas 0.1.0" if store.migrated_from else "already up to date"
    print(f"{args.store}: {state}; studies: {', '.join(names) or 'none'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import sparsenas

    places = [Path.cwd(), Path(sparsenas.__file__).resolve().parent.parent]
    root = next((p for p in places if (p / "benchmarks" / "run.py").is_file()), None)
    if root is None:
        raise ValueError("the benchmarks live in the source repository: run `sparsenas bench` "
                         "from a checkout of it (they are not part of an installed wheel)")
    command = [sys.executable, "-m", "benchmarks.run", *(["--quick"] if args.quick else []),
               *(["--only", *args.only] if args.only else [])]
    return subprocess.run(command, cwd=root).returncode


def _info(args: argparse.Namespace) -> int:
    from sparsenas.info import format_info, info

    print(format_info(info()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sparsenas.strategies import STRATEGIES

    parser = _Parser(prog="sparsenas", description="sparse neural architecture search")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in STRATEGIES.names():
        _add_strategy(commands, STRATEGIES.get(name))
    report = commands.add_parser("report", help="summary, table and plots of a study in a store")
    report.add_argument("--store", type=Path, required=True, help="the SQLite store")
    report.add_argument("--study", default=None,
                        help="the study (default: the store's only study)")
    report.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the store's directory)")
    report.set_defaults(handler=_report)
    listing = commands.add_parser("list", help="the studies in a store")
    listing.add_argument("--store", type=Path, required=True, help="the SQLite store")
    listing.set_defaults(handler=_list)
    migrate = commands.add_parser("migrate", help="upgrade a store written by sparsenas 0.1.0 "
                                                  "in place")
    migrate.add_argument("--store", type=Path, required=True, help="the SQLite store")
    migrate.set_defaults(handler=_migrate)
    bench = commands.add_parser("bench", help="run the benchmarks (from a source checkout); "
                                              "results go to benchmarks/results/")
    bench.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    bench.add_argument("--only", nargs="+", metavar="NAME",
                       help="run only these (masked_linear, masked_conv2d, sampling, sparse, ntk, "
                            "candidate_training)")
    bench.set_defaults(handler=_bench)
    commands.add_parser("info", help="what this installation runs natively").set_defaults(
        handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sparsenas.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, StoreError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"sparsenas: error: {str(message).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsenas: interrupted; finished units are in the store, continue with --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

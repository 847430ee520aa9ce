"""The ``sparsenas`` command line.

    sparsenas random-search [options]   run (or --resume) a random-search study
    sparsenas report --store PATH       table and plots from a study's store
    sparsenas info                      what runs natively in this installation

Errors (a bad option, an unknown dataset, a missing data directory, a store holding another
study) are reported on one line with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _sparsities(text: str) -> tuple[float, ...]:
    values = _floats(text)
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"sparsities must be in [0, 1), got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_random_search(commands: argparse._SubParsersAction) -> None:
    from sparsenas.search import RandomSearchConfig

    d = RandomSearchConfig()
    p = commands.add_parser(
        "random-search", help="random search over node masks vs random masks vs dense parent",
        description="Random search over node masks (SPEC 1.1): per seed and sparsity, score N "
                    "sampled masks, train the best, K random masks and the dense parent fully "
                    "from one shared initialisation, and compare them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data and model")
    data.add_argument("--dataset", default=d.dataset,
                      help="digits (embedded), synthetic, mnist or cifar10 (local files)")
    data.add_argument("--data-root", default=None,
                      help="directory of the mnist / cifar10 files (nothing is downloaded)")
    data.add_argument("--data-seed", type=int, default=d.data_seed,
                      help="seed of the train / validation / test split")
    data.add_argument("--model", default=d.model, help="parent network: mlp or cnn")
    data.add_argument("--widths", type=_ints, default=d.widths,
                      help="hidden units (mlp) or channels (cnn) per masked layer, e.g. 128,128")
    search = p.add_argument_group("search")
    search.add_argument("--sparsities", type=_sparsities, default=d.sparsities,
                        help="node sparsity grid, each in [0, 1)")
    search.add_argument("--budget", choices=("layer", "global"), default=d.budget,
                        help="layer: every layer keeps round((1-s) n_l) nodes; global: the "
                             "network keeps that many in all, spread over layers at random")
    search.add_argument("--num-candidates", type=_positive, default=d.num_candidates,
                        help="masks the search samples and scores per seed and sparsity (N)")
    search.add_argument("--num-random", type=_positive, default=d.num_random,
                        help="random masks trained for comparison per seed and sparsity (K)")
    search.add_argument("--seeds", type=_ints, default=d.seeds, help="study seeds, e.g. 0,1,2")
    search.add_argument("--proxy", default=None,
                        help="score candidates with this registered proxy instead of a short "
                             "training run")
    search.add_argument("--search-epochs", type=_positive, default=d.search_epochs,
                        help="epochs of the short training that scores candidates")
    search.add_argument("--proxy-batch-size", type=_positive, default=d.proxy_batch_size,
                        help="examples the proxy sees")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=_positive, default=d.epochs,
                       help="epochs of the full training")
    train.add_argument("--batch-size", type=_positive, default=d.batch_size)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument("--optimizer", choices=("sgd", "adam"), default=d.optimizer)
    train.add_argument("--momentum", type=float, default=d.momentum)
    train.add_argument("--weight-decay", type=float, default=d.weight_decay)
    train.add_argument("--schedule", choices=("cosine", "constant"), default=d.schedule)
    train.add_argument("--patience", type=_positive, default=None,
                       help="stop when no candidate improved validation accuracy for this many "
                            "epochs (off by default)")
    run = p.add_argument_group("runtime")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    run.add_argument("--threads", type=_positive, default=1,
                     help="CPU threads for torch (the default 1 avoids thread oversubscription "
                          "on small models and shared machines)")
    run.add_argument("--out", type=Path, default=Path("runs/random-search"),
                     help="directory of the table, plots and exports")
    run.add_argument("--store", type=Path, default=None,
                     help="the study's SQLite store (default: OUT/study.sqlite)")
    run.add_argument("--save-models", action="store_true",
                     help="save the trained search-selected and dense networks as safetensors "
                          "under OUT/checkpoints")
    run.add_argument("--resume", action="store_true",
                     help="continue the study in the store (also: join it as another worker)")
    p.set_defaults(handler=_random_search)


def _random_search(args: argparse.Namespace) -> int:
    import torch

    from sparsenas.data import load_dataset
    from sparsenas.models import list_models
    from sparsenas.proxies import list_proxies
    from sparsenas.search import RandomSearchConfig, RandomSearchStudy, write_report
    from sparsenas.store import Store

    torch.set_num_threads(args.threads)
    if args.model not in list_models():
        raise ValueError(f"unknown model {args.model!r}; known: {list_models()}")
    if args.proxy is not None and args.proxy not in list_proxies():
        raise ValueError(f"unknown proxy {args.proxy!r}; known: {list_proxies()}")
    config = RandomSearchConfig(
        dataset=args.dataset, data_root=args.data_root, data_seed=args.data_seed,
        model=args.model, widths=args.widths, sparsities=args.sparsities, budget=args.budget,
        num_candidates=args.num_candidates, num_random=args.num_random, seeds=args.seeds,
        proxy=args.proxy, search_epochs=args.search_epochs,
        proxy_batch_size=args.proxy_batch_size, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, patience=args.patience,
        device=args.device, amp=args.amp)
    store_path = args.store or args.out / "study.sqlite"
    start = time.perf_counter()
    # Loading the data first reports a missing directory before any file is written.
    data = load_dataset(config.dataset, config.data_root, seed=config.data_seed)
    with Store(store_path) as store:
        if not args.resume and store.study_config() is not None:
            raise ValueError(f"store {str(store_path)!r} already holds a study: pass --resume to "
                             f"continue it, or choose another --out / --store")
        checkpoints = args.out / "checkpoints" if args.save_models else None
        RandomSearchStudy(config, store, data=data, checkpoint_dir=checkpoints).run()
        paths = write_report(store, args.out)
        table = paths["table"].read_text()
    print(table)
    print(f"study finished in {time.perf_counter() - start:.1f} s; store: {store_path}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="summary table and plots from a study's store")
    p.add_argument("--store", type=Path, required=True, help="the study's SQLite store")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: the store's directory)")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from sparsenas.search import write_report
    from sparsenas.store import Store

    if not args.store.is_file():
        raise ValueError(f"store {str(args.store)!r} does not exist")
    with Store(args.store) as store:
        paths = write_report(store, args.out or args.store.parent)
    print(paths["table"].read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from sparsenas.info import format_info, info

    print(format_info(info()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsenas", description="sparse neural architecture search")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_random_search(commands)
    _add_report(commands)
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
        print(f"sparsenas: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsenas: interrupted; finished units are in the store, continue with --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

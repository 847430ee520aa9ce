"""Runs every benchmark in turn: ``python -m benchmarks.run [--quick] [--only NAME ...]``.

Each benchmark writes its JSON and markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = ["masked_linear", "masked_conv2d", "sampling", "sparse", "ntk", "candidate_training",
              "sandwich_step", "evopress_offspring", "lga_ntk", "dass_supernet"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only or BENCHMARKS:
        command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        print(f"== {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(command).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

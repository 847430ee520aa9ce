"""``python -m sparsenas.info``: what this installation runs natively and what falls back."""

from __future__ import annotations

import sys
import types

from sparsenas._extension import info


def format_info(report: dict) -> str:
    lines = [f"{key}: {value}" for key, value in report.items() if key != "ops"]
    lines.append("ops (cpu / cuda):")
    for op, devices in report["ops"].items():
        lines.append(f"  {op:<32} {devices['cpu']:<10} {devices['cuda']}")
    if not report["ops"]:
        lines.append("  (none native: every op runs its pure-PyTorch reference)")
    return "\n".join(lines)


def main() -> None:
    print(format_info(info()))


class _CallableModule(types.ModuleType):
    """Importing ``sparsenas.info`` rebinds that attribute from the function to this module;
    keeping the module callable keeps ``sparsenas.info()`` working either way."""

    def __call__(self) -> dict:
        return info()


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    main()

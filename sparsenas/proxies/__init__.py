"""Registry of proxies: scores that rank candidate networks without (or before) full training.

A proxy is a callable ``proxy(model, x, y) -> float`` that scores ``model`` on one batch
(x [n, ...], integer labels y [n]); higher is better for every registered proxy (a metric where
lower is better is registered negated), so a search can maximise any of them by name. Register
one with ``@PROXIES.register("name")``.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from sparsenas.registry import Registry


class Proxy(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> float: ...


def _load_builtin_proxies() -> None:
    # Importing the modules that define proxies registers them; done on first lookup so that
    # importing the registry stays cheap.
    import sparsenas.proxies.ntk  # noqa: F401


PROXIES: Registry[Proxy] = Registry("proxy", _load_builtin_proxies)


def get_proxy(name: str) -> Proxy:
    """The proxy registered under ``name`` (an UnknownNameError lists the known names)."""
    return PROXIES.get(name)


def list_proxies() -> list[str]:
    return PROXIES.names()


__all__ = ["PROXIES", "Proxy", "get_proxy", "list_proxies"]

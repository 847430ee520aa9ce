"""Registry of proxies: scores that rank candidate networks without (or before) full training.

A proxy is a callable ``proxy(model, x, y) -> float`` that scores ``model`` on one batch
(x [n, ...], integer labels y [n]); higher is better for every registered proxy (a metric where
lower is better is registered negated), so a search can maximise any of them by name.
"""

from __future__ import annotations

from typing import Callable, Protocol

from torch import Tensor, nn


class Proxy(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> float: ...


_PROXIES: dict[str, Proxy] = {}


def register_proxy(name: str) -> Callable[[Proxy], Proxy]:
    """Decorator that registers a proxy under ``name`` (names are unique)."""

    def decorate(proxy: Proxy) -> Proxy:
        if name in _PROXIES:
            raise ValueError(f"register_proxy(): a proxy named {name!r} is already registered")
        _PROXIES[name] = proxy
        return proxy

    return decorate


def get_proxy(name: str) -> Proxy:
    """The proxy registered under ``name``; a KeyError lists the known names otherwise."""
    _load_builtin_proxies()
    try:
        return _PROXIES[name]
    except KeyError:
        raise KeyError(f"get_proxy(): unknown proxy {name!r}; known: {list_proxies()}") from None


def list_proxies() -> list[str]:
    _load_builtin_proxies()
    return sorted(_PROXIES)


def _load_builtin_proxies() -> None:
    # Importing the modules that define proxies registers them; done lazily so that importing
    # this registry stays cheap.
    import sparsenas.ntk  # noqa: F401

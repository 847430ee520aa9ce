"""One registry type for models, datasets and proxies: registration, lookup and the one error
type for unknown names."""

from __future__ import annotations

import pytest

from sparsenas.data import DATASETS
from sparsenas.models import MODELS
from sparsenas.proxies import PROXIES
from sparsenas.registry import Registry, UnknownNameError
from sparsenas.spaces import SPACES
from sparsenas.strategies import STRATEGIES


def test_register_get_and_names():
    registry: Registry[int] = Registry("widget")
    registry.register("b", 2)

    @registry.register("a")
    def make_a():
        return 1

    assert registry.names() == ["a", "b"]
    assert registry.get("b") == 2 and registry.get("a") is make_a
    assert "a" in registry and "c" not in registry and len(registry) == 2


def test_unknown_name_lists_known_names_and_is_a_value_error():
    registry: Registry[int] = Registry("widget")
    registry.register("x", 1)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'y'; known: x") as info:
        registry.get("y")
    assert isinstance(info.value, ValueError) and isinstance(info.value, LookupError)
    assert info.value.known == ["x"]


def test_duplicate_and_bad_names_are_refused():
    registry: Registry[int] = Registry("widget")
    registry.register("x", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x", 2)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("", 3)


def test_loader_runs_once_before_first_lookup():
    calls = []
    registry: Registry[int] = Registry("widget", lambda: calls.append(registry.register("z", 9)))
    assert calls == []
    assert registry.get("z") == 9 and registry.names() == ["z"]
    assert len(calls) == 1


@pytest.mark.parametrize("registry,kind,known", [(MODELS, "model", "mlp"), (SPACES, "space", "node"),
                                                 (STRATEGIES, "strategy", "evolution"),
                                                 (DATASETS, "dataset", "digits"),
                                                 (PROXIES, "proxy", "lga")])
def test_library_registries_share_the_error(registry, kind, known):
    assert known in registry.names()
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'nope'"):
        registry.get("nope")

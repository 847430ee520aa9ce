"""One registry type for everything looked up by name: models, datasets, proxies, spaces and
strategies.

A registry maps names to objects (constructors, loaders, callables, classes). Registering a name
twice is an error; looking up an unknown name raises :class:`UnknownNameError`, whose message lists
the known names, so every "unknown X" error in the library reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError, ValueError):
    """A name that no entry of a registry carries (a ValueError, so bad input, and a
    LookupError, so ``except KeyError``-style lookups in user code still read naturally)."""

    def __init__(self, kind: str, name: object, known: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}")
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind. ``kind`` names the entries in messages ("model", "proxy", …);
    ``loader`` (optional) is called once before the first lookup, to import the modules whose
    import registers the built-in entries without making this module import them."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str, entry: T | None = None):
        """``registry.register("name", obj)``, or ``@registry.register("name")`` as a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: a name must be a non-empty string, got "
                             f"{name!r}")

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} registry: a {self.kind} named {name!r} is already "
                                 f"registered")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

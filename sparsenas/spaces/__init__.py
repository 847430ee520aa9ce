"""Search spaces: the SearchSpace protocol and the spaces the methods search, registered by name
in :data:`SPACES` (their constructors)."""

from sparsenas.registry import Registry
from sparsenas.spaces.archs import ArchSpace
from sparsenas.spaces.base import SearchSpace
from sparsenas.spaces.cells import CellSpace
from sparsenas.spaces.node import NodeSpace, stack_candidates

SPACES: Registry[type[SearchSpace]] = Registry("space")
SPACES.register("node", NodeSpace)
SPACES.register("cells", CellSpace)
SPACES.register("arch", ArchSpace)

__all__ = ["ArchSpace", "CellSpace", "NodeSpace", "SPACES", "SearchSpace", "stack_candidates"]

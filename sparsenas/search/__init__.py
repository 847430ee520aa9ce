"""Search strategies over node spaces; they run candidates through the Trainer, never their own
training loop."""

from sparsenas.search.random_search import RandomSearchConfig, RandomSearchStudy
from sparsenas.search.report import StudySummary, summarize, write_report
from sparsenas.search.space import NodeSpace
from sparsenas.seeds import derive_seed

__all__ = ["NodeSpace", "RandomSearchConfig", "RandomSearchStudy", "StudySummary",
           "derive_seed", "summarize", "write_report"]

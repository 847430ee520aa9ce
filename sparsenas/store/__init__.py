"""Results store: one SQLite database per study, crash-safe and shared by concurrent workers."""

from sparsenas.store.checkpoints import load_checkpoint, save_checkpoint
from sparsenas.store.sqlite_store import Store, StoreError, TrialRecord

__all__ = ["Store", "StoreError", "TrialRecord", "load_checkpoint", "save_checkpoint"]

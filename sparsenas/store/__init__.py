"""Results store: named studies in one SQLite file, crash-safe and shared by concurrent workers."""

from sparsenas.store.checkpoints import load_checkpoint, load_state, save_checkpoint, save_state
from sparsenas.store.sqlite_store import (
    LEGACY_STUDY,
    TRIAL_STATES,
    Store,
    StoreError,
    StudyInfo,
    TrialRecord,
)

__all__ = ["LEGACY_STUDY", "Store", "StoreError", "StudyInfo", "TRIAL_STATES", "TrialRecord",
           "load_checkpoint", "load_state", "save_checkpoint", "save_state"]

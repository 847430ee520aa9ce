"""DASS: DARTS search whose parametric operations are score-pruned, with the architecture
optimised for the validation loss of the sparse network; HYDRA pruning for the final evaluation."""

from sparsenas.methods.dass.hydra import (
    PruneResult,
    prune_and_finetune,
    start_finetuning,
    start_pruning,
)
from sparsenas.methods.dass.search import SearchSchedule, enter_phase, search_splits

__all__ = ["PruneResult", "SearchSchedule", "enter_phase", "prune_and_finetune", "search_splits",
           "start_finetuning", "start_pruning"]

"""Training K candidates together (one CandidateBatch through the K-candidate masked ops) against
training them one after another (each candidate its own parent network with node masks).

    python -m benchmarks.candidate_training [--quick] [--threads N]

Correctness first: every candidate's validation loss after training together must equal its
validation loss trained alone. Then each way is timed over whole training epochs on the digits
data (all candidates see the same shuffled batches), and the ratio reported.
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.harness import time_call, write_results
from sparsenas.data import load_dataset
from sparsenas.models import CandidateBatch, create_model
from sparsenas.sampling import sample_node_masks
from sparsenas.train import TrainConfig, Trainer


def _parent(widths: tuple[int, ...], input_shape, num_classes: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model("mlp", input_shape=input_shape, num_classes=num_classes,
                            widths=widths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few candidate counts, one epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset("digits", seed=0)
    widths, sparsity, epochs = (128, 128), 0.9, 1 if args.quick else 2
    config = TrainConfig(epochs=epochs, batch_size=64)
    parent = _parent(widths, data.input_shape, data.num_classes)
    counts = (4, 16) if args.quick else (1, 4, 16, 64)
    Trainer(config, device=device).fit(copy.deepcopy(parent), data, seed=0)  # warm-up (lazy imports)
    rows = []
    for k in counts:
        masks = sample_node_masks(parent.layer_sizes, sparsity, k, seed=1)
        singles = []
        for i in range(k):
            single = copy.deepcopy(parent)
            single.set_candidate([m[i] for m in masks])
            singles.append(single)

        def together():
            return Trainer(config, device=device).fit(CandidateBatch(parent, masks), data, seed=2)

        def one_after_another():
            return [Trainer(config, device=device).fit(copy.deepcopy(s), data, seed=2) for s in singles]

        batched, alone = together(), one_after_another()
        for i, result in enumerate(alone):
            expected, got = result.history[-1].val_loss[0], batched.history[-1].val_loss[i]
            if abs(expected - got) > 1e-3 * max(1.0, abs(expected)):
                raise AssertionError(f"K={k}, candidate {i}: val loss {got} together vs "
                                     f"{expected} alone")
        t_together = time_call(together, device)
        t_alone = time_call(one_after_another, device)
        rows.append({"K": k, "epochs": epochs, "together_s": t_together,
                     "one_after_another_s": t_alone,
                     "per_candidate_epoch_together_ms": 1e3 * t_together / (k * epochs),
                     "per_candidate_epoch_alone_ms": 1e3 * t_alone / (k * epochs),
                     "speedup": t_alone / t_together})
        print(rows[-1])
    notes = (f"digits ({len(data.x_train)} training examples), MLP {list(widths)} parent at node "
             f"sparsity {sparsity}, batch 64, SGD; whole Trainer.fit calls timed (evaluation "
             f"included). speedup = one-after-another / together.")
    path = write_results("candidate_training", device, rows,
                         ["K", "epochs", "together_s", "one_after_another_s",
                          "per_candidate_epoch_together_ms", "per_candidate_epoch_alone_ms",
                          "speedup"], notes)
    print(path.read_text())


if __name__ == "__main__":
    main()

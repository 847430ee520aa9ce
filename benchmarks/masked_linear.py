"""masked_linear against the PyTorch code it replaces, on each of its two CPU paths and the
automatic choice between them.

One mask: dense ``F.linear`` (the floor), ``F.linear(x, w * mask)`` (the two-line alternative),
and masked_linear with bool / uint8 / packed / soft masks, on a square 1024 x 1024 layer and a
non-square 1024 -> 4096 one, forward and forward + backward, at 1 and 2 threads. Each masked_linear
row is timed with the path chosen automatically and with each path forced
(``SPARSENAS_MASKED_LINEAR_PATH=fused|gemm``), and shows the path chosen per stage (and whether a
one-mask training step keeps W ⊙ M for the input gradient); a row where the
automatic choice is more than 10% slower than the path it did not take (the faster forced path
where it mixed the two per stage) is reported at the end. Below
16 rows the op is memory bound and is also compared with its byte floor: the bytes of W, the mask,
x and y (and for the backward, of the gradients) over the copy bandwidth measured on a buffer of
the weight's size in the same run.

K candidates: K = 64 masks over one shared weight against a loop of K ``F.linear(x_k, w * mask_k)``,
and the same multiply-adds without masks as one dense GEMM (the speedup a kernel at the BLAS's
dense speed would reach).

``--contended`` runs the same timings while a competing 2-thread job (a torch matrix-multiply loop
in another process) shares the cores, and reports how much each method slows down against an idle
run of the same rows.

    python -m benchmarks.masked_linear [--quick] [--contended]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

# A fresh record of kernel path choices, so that this run measures (and shows) what a new process
# on this machine chooses, not what an earlier one recorded.
os.environ["SPARSENAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="sparsenas-bench-cache-")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    competing_job, copy_bandwidth, time_call, write_results)
from sparsenas import _extension  # noqa: E402
from sparsenas.ops import _reference, masked_linear, pack_mask  # noqa: E402

LAYERS = ((1024, 1024), (1024, 4096))  # (in, out)
DENSITY = 0.5
CANDIDATES = 64
MASK_KINDS = ("bool", "uint8", "packed", "soft")
PATH_VARIABLE = "SPARSENAS_MASKED_LINEAR_PATH"
MEMORY_BOUND_ROWS = 16
AUTO_TOLERANCE = 1.10
# Each time is the best of this many medians, taken in alternating rounds (timed_rounds): the
# best median is the one least disturbed by other work on the machine.
REPEATS = 3


def check_correctness() -> None:
    """Forward and gradients of every mask kind and path against the float64 reference."""
    gen = torch.Generator().manual_seed(0)
    for path in ("fused", "gemm"):
        with forced_path(path):
            for rows, K in ((3, None), (300, None), (5, 4)):
                lead = () if K is None else (K,)
                x = torch.randn(*lead, rows, 96, generator=gen, dtype=torch.float64)
                weight = torch.randn(80, 96, generator=gen, dtype=torch.float64)
                bias = torch.randn(80, generator=gen, dtype=torch.float64)
                keep = torch.rand(*lead, 80, 96, generator=gen) < DENSITY
                for kind in MASK_KINDS:
                    mask, packed = make_mask(keep, kind)
                    leaves = [t.float().requires_grad_() for t in (x, weight, bias)]
                    out = masked_linear(leaves[0], leaves[1], mask, leaves[2], packed=packed)
                    ref_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
                    ref = _reference.masked_linear(ref_leaves[0], ref_leaves[1], keep,
                                                   ref_leaves[2])
                    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
                    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
                    grads = torch.autograd.grad(out, leaves, grad_out.float())
                    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out)
                    for grad, ref_grad in zip(grads, ref_grads):
                        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-3, rtol=1e-4)


def make_mask(keep: torch.Tensor, kind: str) -> tuple[torch.Tensor, bool]:
    if kind == "bool":
        return keep, False
    if kind == "uint8":
        return keep.to(torch.uint8), False
    if kind == "packed":
        return pack_mask(keep), True
    return keep.float(), False


@contextlib.contextmanager
def forced_path(path: str | None):
    previous = os.environ.get(PATH_VARIABLE)
    if path is None:
        os.environ.pop(PATH_VARIABLE, None)
    else:
        os.environ[PATH_VARIABLE] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PATH_VARIABLE, None)
        else:
            os.environ[PATH_VARIABLE] = previous


def timed_rounds(methods: dict[str, tuple], inputs: list[torch.Tensor]
                 ) -> dict[str, tuple[float, float]]:
    """(fwd, fwd+bwd) seconds of each method, given as (forward callable, kernel path it runs on:
    'fused', 'gemm' or None for the automatic choice). Rounds alternate the methods and keep each
    one's best median: a burst of load on the machine (seconds long on a shared VM) then hits
    every method alike instead of one method's whole measurement."""
    steps = {}
    for name, (forward, path) in methods.items():
        with forced_path(path):
            grad_out = torch.randn_like(forward())

        def step(forward=forward, grad_out=grad_out):
            torch.autograd.grad(forward(), inputs, grad_out)

        steps[name] = (forward, step, path)
    best = {name: [float("inf"), float("inf")] for name in methods}
    for _ in range(REPEATS):
        for name, (forward, step, path) in steps.items():
            with forced_path(path):
                with torch.no_grad():
                    best[name][0] = min(best[name][0], time_call(forward, torch.device("cpu"),
                                                                 MIN_RUN_TIME))
                best[name][1] = min(best[name][1], time_call(step, torch.device("cpu"),
                                                             MIN_RUN_TIME))
    return {name: (fwd, fwd_bwd) for name, (fwd, fwd_bwd) in best.items()}


def chosen_paths(forward, inputs: list[torch.Tensor]) -> dict[str, str]:
    """Runs a forward and backward of ``forward`` on the automatic path; returns the path chosen
    for each stage that it measured ('fwd', 'gi' = input gradient, 'gw' = weight gradient, and
    'keep' = 'yes' when a training step keeps W*M); empty when every choice was made earlier."""
    before = _extension.native.kernel_path_choices()
    with forced_path(None):
        out = forward()
        torch.autograd.grad(out, inputs, torch.ones_like(out))
    added = {key: path for key, path in _extension.native.kernel_path_choices().items()
             if key not in before}
    stages = {"forward": "fwd", "grad_input": "gi", "grad_weight": "gw"}
    choice = {}
    for key, path in sorted(added.items()):
        stage = key.split()[1]
        if stage == "training_step":
            choice["keep"] = "yes" if path == "gemm" else "no"
        else:
            choice[stages[stage]] = path
    return choice


def describe_choice(choice: dict[str, str]) -> str:
    if not choice:
        return "unmeasured (fused below the size floor)"
    return " ".join(f"keep W*M={path}" if stage == "keep" else f"{stage}={path}"
                    for stage, path in choice.items())


def other_path_time(choice: dict[str, str], phase: int, fused: float, gemm: float) -> float:
    """The time of the path the automatic choice did not take in phase 0 (fwd) or 1 (fwd+bwd):
    the other one when it chose one path for every stage (keeping W*M counts as gemm), the faster
    of the two when it mixed them or is unknown."""
    stages = ["fwd"] if phase == 0 else ["fwd", "gi", "gw"]
    paths = {choice.get(stage) for stage in stages}
    if phase == 1 and choice.get("keep") == "yes":
        paths.add("gemm")
    if paths == {"fused"}:
        return gemm
    if paths == {"gemm"}:
        return fused
    return min(fused, gemm)


def time_masked_paths(baselines: dict[str, tuple], masks: dict[str, tuple], x: torch.Tensor,
                      weight: torch.Tensor, bias: torch.Tensor, inputs: list[torch.Tensor]
                      ) -> tuple[dict, dict]:
    """Times the baselines and masked_linear with each mask (kind -> (mask, packed)) on the
    automatic path and each path forced, all in one set of alternating rounds. Returns the times
    by method ('<kind> auto', '<kind> fused', '<kind> gemm' and the baselines' names) and the
    paths chosen per kind."""
    methods = dict(baselines)
    chosen = {}
    for kind, (mask, packed) in masks.items():
        def forward(mask=mask, packed=packed):
            return masked_linear(x, weight, mask, bias, packed=packed)

        # bool and uint8 masks share their choices (one byte-mask kernel): uint8 finds them made.
        chosen[kind] = chosen_paths(forward, inputs)
        if not chosen[kind] and kind == "uint8" and "bool" in chosen:
            chosen[kind] = chosen["bool"]
        methods.update({f"{kind} {path or 'auto'}": (forward, path)
                        for path in (None, "fused", "gemm")})
    return timed_rounds(methods, inputs), chosen


def byte_floor(in_f: int, out_f: int, rows: int, mask: torch.Tensor, bandwidth: float
               ) -> tuple[float, float]:
    """Seconds to move the bytes a forward, and a forward + backward, must touch at least."""
    w, m = 4 * in_f * out_f, mask.numel() * mask.element_size()
    x, y = 4 * rows * in_f, 4 * rows * out_f
    forward = w + m + x + y
    # grad_input reads W, M, dy and writes dx; grad_weight reads dy, x, M and writes dW.
    backward = (w + m + y + x) + (y + x + m + w)
    return forward / bandwidth, (forward + backward) / bandwidth


def single_mask_rows(in_f: int, out_f: int, batches: list[int], kinds: tuple[str, ...]
                     ) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(out_f, in_f, generator=gen).requires_grad_()
    bias = torch.randn(out_f, generator=gen).requires_grad_()
    keep = torch.rand(out_f, in_f, generator=gen) < DENSITY
    float_mask = keep.float()
    bandwidth = copy_bandwidth(4 * in_f * out_f, torch.device("cpu"), MIN_RUN_TIME, REPEATS)
    layer = f"{in_f}->{out_f}"
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_f, generator=gen).requires_grad_()
        leaves = [x, weight, bias]
        masks = {kind: make_mask(keep, kind) for kind in kinds}
        baselines = {"dense": (lambda: F.linear(x, weight, bias), None),
                     "w*mask": (lambda: F.linear(x, weight * float_mask, bias), None)}
        times, chosen = time_masked_paths(baselines, masks, x, weight, bias, leaves)
        dense, w_mask = times["dense"], times["w*mask"]
        for kind, (mask, packed) in masks.items():
            auto, fused, gemm = (times[f"{kind} {path}"] for path in ("auto", "fused", "gemm"))
            floors = byte_floor(in_f, out_f, batch, mask, bandwidth)
            for i, phase in enumerate(("fwd", "fwd+bwd")):
                row = {
                    "case": layer, "threads": torch.get_num_threads(), "mask": kind,
                    "batch": batch, "phase": phase, "chosen": describe_choice(chosen[kind]),
                    "auto_ms": auto[i] * 1e3, "fused_ms": fused[i] * 1e3,
                    "gemm_ms": gemm[i] * 1e3, "dense_ms": dense[i] * 1e3,
                    "w*mask_ms": w_mask[i] * 1e3,
                    "ratio_to_dense": auto[i] / dense[i],
                    "speedup_vs_w*mask": w_mask[i] / auto[i],
                    "auto_vs_best_path": auto[i] / min(fused[i], gemm[i]),
                    "auto_vs_other_path":
                        auto[i] / other_path_time(chosen[kind], i, fused[i], gemm[i]),
                }
                if batch < MEMORY_BOUND_ROWS:
                    row["ratio_to_byte_floor"] = auto[i] / floors[i]
                    row["dense_ratio_to_byte_floor"] = dense[i] / floors[i]
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def candidate_rows(batches: list[int], kinds: tuple[str, ...]) -> list[dict]:
    in_f, out_f = LAYERS[0]
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(out_f, in_f, generator=gen).requires_grad_()
    bias = torch.randn(out_f, generator=gen).requires_grad_()
    keep = torch.rand(CANDIDATES, out_f, in_f, generator=gen) < DENSITY
    float_masks = keep.float()
    rows = []
    for batch in batches:
        x = torch.randn(CANDIDATES, batch, in_f, generator=gen).requires_grad_()
        leaves = [x, weight, bias]

        def loop():
            return torch.stack([F.linear(x[k], weight * float_masks[k], bias)
                                for k in range(CANDIDATES)])

        # The same multiply-adds without masks, as one BLAS GEMM over every candidate's rows:
        # a kernel running at the BLAS's dense speed would be loop / dense_gemm times faster.
        def dense_gemm():
            return F.linear(x, weight, bias)

        masks = {kind: make_mask(keep, kind) for kind in kinds}
        times, chosen = time_masked_paths({"loop": (loop, None), "dense_gemm": (dense_gemm, None)},
                                          masks, x, weight, bias, leaves)
        baseline, dense = times["loop"], times["dense_gemm"]
        for kind in kinds:
            auto, fused, gemm = (times[f"{kind} {path}"] for path in ("auto", "fused", "gemm"))
            for i, phase in enumerate(("fwd", "fwd+bwd")):
                row = {
                    "case": f"K={CANDIDATES} {in_f}->{out_f}", "threads": torch.get_num_threads(),
                    "mask": kind, "batch": batch, "phase": phase, "chosen": describe_choice(chosen[kind]),
                    "auto_ms": auto[i] * 1e3, "fused_ms": fused[i] * 1e3,
                    "gemm_ms": gemm[i] * 1e3, "loop_ms": baseline[i] * 1e3,
                    "dense_gemm_ms": dense[i] * 1e3,
                    "speedup_vs_loop": baseline[i] / auto[i],
                    "speedup_at_dense_gemm_speed": baseline[i] / dense[i],
                    "auto_vs_best_path": auto[i] / min(fused[i], gemm[i]),
                    "auto_vs_other_path":
                        auto[i] / other_path_time(chosen[kind], i, fused[i], gemm[i]),
                }
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    return "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items())


def contended_rows(batches: list[int]) -> list[dict]:
    """The 1024 x 1024 bool-mask rows at 2 threads, idle and with a competing job, side by side."""
    in_f, out_f = LAYERS[0]
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(out_f, in_f, generator=gen).requires_grad_()
    bias = torch.randn(out_f, generator=gen).requires_grad_()
    keep = torch.rand(out_f, in_f, generator=gen) < DENSITY
    float_mask = keep.float()
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_f, generator=gen).requires_grad_()
        leaves = [x, weight, bias]
        methods = {
            "dense F.linear": (lambda: F.linear(x, weight, bias), None),
            "F.linear(x, w*mask)": (lambda: F.linear(x, weight * float_mask, bias), None),
            "masked_linear": (lambda: masked_linear(x, weight, keep, bias), None),
        }
        idle = timed_rounds(methods, leaves)
        with competing_job():
            busy = timed_rounds(methods, leaves)
        for name in methods:
            for i, phase in enumerate(("fwd", "fwd+bwd")):
                row = {"case": f"{in_f}->{out_f} bool", "threads": torch.get_num_threads(),
                       "batch": batch, "phase": phase, "method": name,
                       "idle_ms": idle[name][i] * 1e3, "contended_ms": busy[name][i] * 1e3,
                       "slowdown": busy[name][i] / idle[name][i]}
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


MIN_RUN_TIME = 0.1


def main() -> None:
    global MIN_RUN_TIME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter runs")
    parser.add_argument("--contended", action="store_true",
                        help="time with a competing 2-thread job on the same cores")
    args = parser.parse_args()
    check_correctness()
    print("correctness: every mask kind and path matches the float64 reference", flush=True)
    if args.quick:
        MIN_RUN_TIME = 0.02
    if args.contended:
        torch.set_num_threads(2)
        rows = contended_rows([1, 16, 256] if not args.quick else [16])
        columns = ["case", "threads", "batch", "phase", "method", "idle_ms", "contended_ms",
                   "slowdown"]
        notes = ("Each method timed idle and then while a competing 2-thread torch matrix-multiply "
                 "loop runs in another process on the same cores. slowdown = contended / idle "
                 f"time. Times: best of {REPEATS} medians.")
        path = write_results("masked_linear_contended_quick" if args.quick else "masked_linear_contended",
                             torch.device("cpu"), rows, columns, notes)
        print(f"results: {path}")
        return
    batches = [1, 16, 256] if args.quick else [1, 4, 16, 64, 256, 1024]
    candidate_batches = [16] if args.quick else [1, 16, 64]
    layers = LAYERS[:1] if args.quick else LAYERS
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for in_f, out_f in layers:
            rows += single_mask_rows(in_f, out_f, batches, MASK_KINDS)
        rows += candidate_rows(candidate_batches, ("bool", "packed"))
    misses = [row for row in rows if row["auto_vs_other_path"] > AUTO_TOLERANCE]
    for row in misses:
        print(f"automatic choice more than {AUTO_TOLERANCE - 1:.0%} slower than the other path: "
              f"{format_row(row)}")
    columns = ["case", "threads", "mask", "batch", "phase", "chosen", "auto_ms", "fused_ms",
               "gemm_ms", "dense_ms", "w*mask_ms", "loop_ms", "dense_gemm_ms", "ratio_to_dense",
               "speedup_vs_w*mask", "speedup_vs_loop", "speedup_at_dense_gemm_speed",
               "ratio_to_byte_floor",
               "dense_ratio_to_byte_floor", "auto_vs_best_path", "auto_vs_other_path"]
    notes = (f"Mask density {DENSITY}, float32, bias; batch = rows of x (per candidate for "
             f"K={CANDIDATES}, weight shared). fwd+bwd: gradients of x, weight and bias. auto: the "
             "path chosen automatically (per stage in 'chosen': fwd, gi = input gradient, gw = "
             "weight gradient; 'keep W*M=yes': a training step with x's gradient computes its "
             "forward and input gradient as BLAS products on a kept masked weight, and fwd / gi "
             "are the paths of calls without x's gradient); fused / gemm: each path forced "
             "(gemm keeps W*M). "
             "ratio_to_dense < 1 is faster than "
             "dense F.linear; speedup_* > 1 is faster than that baseline. K candidates: "
             "dense_gemm = the same multiply-adds without masks as one BLAS GEMM over every "
             "candidate's rows (F.linear of x [K, rows, in] and the shared weight), and "
             "speedup_at_dense_gemm_speed = loop / dense_gemm, what a kernel running at the BLAS's "
             "dense speed would reach. ratio_to_byte_floor "
             "(batch < 16): time over the bytes of W, mask, x and y (fwd; fwd+bwd adds the "
             "gradients' bytes) moved at the copy bandwidth measured in this run. "
             "auto_vs_best_path: the automatic choice's time over the faster forced path's (where "
             "both ran the same kernels, their difference is this machine's noise); "
             f"auto_vs_other_path > {AUTO_TOLERANCE} marks a wrong automatic choice, slower than "
             "the path it did not take (the faster of the two where it mixed them per stage) "
             f"({len(misses)} rows; {sum(row['auto_vs_best_path'] > AUTO_TOLERANCE for row in rows)} "
             f"with auto_vs_best_path > {AUTO_TOLERANCE}). Times: best of {REPEATS} medians, in "
             "rounds that alternate the methods of each batch size."
             + (" Quick mode." if args.quick else ""))
    path = write_results("masked_linear_quick" if args.quick else "masked_linear", torch.device("cpu"),
                         rows, columns, notes)
    print(f"results: {path}")


if __name__ == "__main__":
    main()

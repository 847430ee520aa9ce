"""Shared benchmark harness: timing, peak memory and result files.

Every benchmark checks correctness first, then times each method on the same random inputs in the
same run, and reports ratios to the baseline measured beside it. Results go to
``benchmarks/results/<name>_<device>.json`` (machine-readable) and ``.md`` (a table), where
<device> names the machine and, for a CPU, its widest vector extension (``cpu_intel-xeon-avx512``,
``cpu_amd-epyc-avx2``, ``cuda_nvidia-h200``): CPUs sold under one model name differ in it, and the
native kernels run different code on each, so runs on different machines stand side by side.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.utils.benchmark as torch_benchmark

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_call(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.2) -> float:
    """Median seconds per call of ``fn`` after warm-up (torch.utils.benchmark on CPU, CUDA events
    on GPU)."""
    if device.type == "cuda":
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        times.sort()
        return times[len(times) // 2]
    fn()
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn},
                                  num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def best_of_rounds(calls: dict[str, Callable[[], object]], device: torch.device,
                   min_run_time: float, rounds: int) -> dict[str, float]:
    """Seconds per call of each callable: the best of ``rounds`` medians (time_call), taken in
    rounds that alternate the callables, so that a burst of load from other processes on a shared
    machine (seconds long on a VM) hits every callable alike instead of one's whole measurement."""
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            best[name] = min(best[name], time_call(fn, device, min_run_time))
    return best


COMPETITOR = ("import torch\n"
              "torch.set_num_threads(2)\n"
              "a = torch.randn(1024, 1024)\n"
              "print('ready', flush=True)\n"
              "while True:\n"
              "    a @ a\n")


@contextlib.contextmanager
def competing_job() -> Iterator[None]:
    """A 2-thread torch.mm loop in a subprocess, running while the block runs: the benchmarks'
    --contended modes time the library beside another job on the same cores."""
    job = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE, text=True)
    try:
        if job.stdout.readline().strip() != "ready":
            raise RuntimeError("the competing job did not start")
        time.sleep(0.5)  # its threads spinning
        yield
    finally:
        job.terminate()
        job.wait()


def copy_bandwidth(nbytes: int, device: torch.device, min_run_time: float = 0.1,
                   repeats: int = 1) -> float:
    """Bytes moved per second (read + written) by ``copy_`` of a buffer of ``nbytes``: the
    yardstick of the benchmarks' byte floors. The best of ``repeats`` medians."""
    src = torch.ones(max(nbytes // 4, 1), device=device)
    dst = torch.empty_like(src)
    seconds = min(time_call(lambda: dst.copy_(src), device, min_run_time) for _ in range(repeats))
    return 2 * src.numel() * 4 / seconds


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one call: the CUDA allocator's peak on GPU; on CPU the running
    sum of every profiler event's own (self) allocations and frees, in time order."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = current = 0
    # Self (not inclusive) usage: an allocation made inside nested ops is counted once.
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def machine_tag(device: torch.device) -> str:
    """The device type and model, and for a CPU its widest vector extension, as a file-name part:
    'cpu_intel-xeon-avx512', 'cpu_amd-epyc-avx2', 'cuda_nvidia-h200'."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        model = device_name(device).split(" (", 1)[0]
    for noise in ("(R)", "(TM)", "(tm)", "Processor", "CPU", "Core"):
        model = model.replace(noise, " ")
    model = model.split("@", 1)[0]
    slug = "-".join(re.findall(r"[a-z0-9]+", model.lower())) or "unknown"
    if device.type == "cpu":
        extensions = vector_extensions()
        widest = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"),
                                               ("avx", "avx")) if flag in extensions), None)
        if widest is not None:
            slug = f"{slug}-{widest}"
    return f"{device.type}_{slug}"


def vector_extensions() -> list[str]:
    """The x86 vector extensions this CPU reports (what the native kernels can dispatch to)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                        "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]


def blas() -> str:
    """The BLAS torch was built with (from torch.__config__.show())."""
    for line in torch.__config__.show().splitlines():
        if "BLAS_INFO" in line:
            return line.split("BLAS_INFO=", 1)[1].split(",")[0].strip()
    return "unknown"


def allocator() -> str:
    """The CPU memory allocator in use, as far as the environment says: a preloaded allocator, or
    glibc malloc with its tunables (by default glibc returns large freed blocks to the OS, so the
    next tensor of that size page-faults on first touch, which costs as much as a small GEMM)."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preloaded:
            return name
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return f"glibc malloc ({tunables})" if "malloc" in tunables else "glibc malloc (default)"


def environment(device: torch.device) -> dict:
    import sparsenas

    report = sparsenas.info()
    return {
        "device": device_name(device),
        "device_type": device.type,
        "vector_extensions": vector_extensions(),
        "blas": blas(),
        "allocator": allocator(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "runtime default"),
        "load_average_1min": os.getloadavg()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "sparsenas": sparsenas.__version__,
        "extension": report["extension"],
        "python": platform.python_version(),
    }


def write_results(name: str, device: torch.device, rows: list[dict], columns: list[str],
                  notes: str = "") -> Path:
    """Writes rows as JSON (with the environment) and as a markdown table; returns the .md path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    stem = RESULTS_DIR / f"{name}_{machine_tag(device)}"
    stem.with_suffix(".json").write_text(
        json.dumps({"benchmark": name, "environment": env, "notes": notes, "rows": rows},
                   indent=2) + "\n")
    lines = [f"# {name} ({device.type})", "",
             f"Device: {env['device']}; vector extensions: "
             f"{', '.join(env['vector_extensions']) or 'none reported'}; BLAS: {env['blas']}; "
             f"allocator: {env['allocator']}; OMP_WAIT_POLICY: {env['omp_wait_policy']}. "
             f"torch {env['torch']}, sparsenas {env['sparsenas']}, {env['date']}; load average "
             f"(1 min) at the end: {env['load_average_1min']:.1f}.", ""]
    if notes:
        lines += [notes, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)

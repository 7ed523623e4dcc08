"""Time a callable and measure the peak memory it allocates, on CPU or CUDA.

General helpers for every ``lrrobust bench`` command: ``measure(fn, device)`` runs ``fn`` a few times to warm
up, once more to measure its peak memory, then several timed runs, and reports the median in milliseconds and
the peak in MB (10**6 bytes).

Peak memory is the highest amount of memory allocated *during* one call above what was allocated when the call
began: inputs, parameters and anything alive before the call are not counted; the outputs, tensors saved for
backward, gradients and temporaries are.

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``, minus
  ``torch.cuda.memory_allocated()`` at the start of the call (the caching allocator's live tensor bytes).
- CPU: PyTorch's CPU allocator reports every allocation and free to the profiler when memory profiling is on.
  The call runs once under ``torch.profiler`` with ``profile_memory=True``; the allocation events (size > 0 for
  an allocation, < 0 for a free) are put in time order and summed; the peak is the largest running sum. This
  sees every tensor allocated through PyTorch's allocator, in any thread, including workspaces a C++ kernel
  allocates with ``at::empty``; it does not see plain ``malloc``/``std::vector`` memory inside a kernel, and a
  free of a tensor allocated before the call is not reported (so such frees do not lower the peak).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

MB = 1e6

# Lines that PyTorch's profiler (Kineto) writes to stderr on every session; they carry no information here.
_PROFILER_NOISE = re.compile(
    r"SyncActivityProfilerHandler|profiler_start|profiler_stop|gpuGetDeviceCount|"
    r"Memory block of unknown size was allocated before the profiling started|"
    r"CUPTI|libcupti|Profiler is not initialized|Kineto"
)


@dataclass
class Measurement:
    """Median wall time of the timed runs (ms), peak memory of one call (MB), and every run's time."""

    ms: float
    peak_mb: float
    times_ms: list[float] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.times_ms)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall clock measures it; nothing to do on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall time of one call of ``fn`` in milliseconds, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_ms(
    fn: Callable[[], object],
    device: torch.device | str,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> list[float]:
    """Times (ms) of up to ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``max_seconds``, the number of timed calls is cut so they take about that long (judged from the last
    warm-up call), but never below ``min_repeats`` (nor above ``repeats``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    last = None
    for _ in range(warmup):
        last = time_once_ms(fn, device)
    if max_seconds is not None:
        if last is None:
            last = time_once_ms(fn, device)
        affordable = int(max_seconds * 1e3 // max(last, 1e-6))
        repeats = max(min(repeats, min_repeats), min(repeats, affordable))
    return [time_once_ms(fn, device) for _ in range(repeats)]


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak memory (MB) that one call of ``fn`` allocates above what was allocated when it began."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(fn, device) / MB
    if device.type == "cpu":
        return _cpu_peak_bytes(fn) / MB
    raise ValueError(f"cannot measure memory on device type {device.type!r}; use cpu or cuda")


def measure(
    fn: Callable[[], object],
    device: torch.device | str,
    repeats: int = 10,
    warmup: int = 1,
    max_seconds: float | None = None,
    min_repeats: int = 3,
) -> Measurement:
    """Warm up, measure the peak memory of one call, then time the calls; see ``time_ms`` for the options.

    The memory call runs after the warm-up (so one-time allocations such as lazy initialisation are not
    counted) and is not timed (the CPU profiler slows it down).
    """
    for _ in range(warmup):
        fn()
    peak = peak_memory_mb(fn, device)
    times = time_ms(fn, device, repeats=repeats, warmup=0, max_seconds=max_seconds, min_repeats=min_repeats)
    return Measurement(ms=statistics.median(times), peak_mb=peak, times_ms=times)


def _cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - start)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _filtered_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    roots = prof.profiler.kineto_results.experimental_event_tree()
    events = []
    stack = list(roots)
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file and pass on every line except the profiler's chatter."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line for line in tmp.read().decode(errors="replace").splitlines() if not _PROFILER_NOISE.search(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")

"""Timers: per-call seconds as median, p20 and p80 over many samples.

Both timers interleave the workloads of one shape sample by sample (fastln,
torch, copy, fastln, torch, copy, ...), rotating who goes first, so that clock
boost, thermal drift or a noisy neighbour hit every implementation alike.

CPU: wall clock (time.perf_counter). A sample runs k back-to-back calls, k
chosen so a sample lasts about a millisecond; the timer's resolution and the
loop then cost nothing measurable.

CUDA: events around each sample, after writing a buffer twice the L2 size so
that no sample starts with its inputs cached by the previous one. A call that
takes less than ~20 us on the GPU (the caller says so, by bytes moved, for a
whole row) is dominated by launch overhead and Python between the events, so
it is captured K times into a CUDA graph and the graph is replayed instead
(time / K): that reports what the GPU spends per call, as in a
graph-captured model. Inside one replay calls 2..K may hit L2.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

Workload = Callable[[], object]


@dataclass(frozen=True)
class Stats:
    median: float  # seconds per call
    p20: float
    p80: float
    samples: int
    calls_per_sample: int
    method: str  # "wall", "events", "graph" or "events-loop"


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summarize(values: list[float], calls: int, method: str) -> Stats:
    v = sorted(values)
    return Stats(percentile(v, 0.5), percentile(v, 0.2), percentile(v, 0.8), len(v), calls, method)


def _interleave(
    samplers: dict[str, Callable[[], float]], budget_s: float, min_reps: int, max_reps: int
) -> dict[str, list[float]]:
    """Calls every sampler once per round, rotating the order, until both
    min_reps rounds and budget_s seconds (or max_reps rounds) are done."""
    names = list(samplers)
    values: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a sample would be charged to whoever ran it
    try:
        start = time.perf_counter()
        rounds = 0
        while rounds < min_reps or (rounds < max_reps and time.perf_counter() - start < budget_s):
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                values[name].append(samplers[name]())
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return values


class ForeignLoad:
    """CPU time other processes (and the hypervisor, as steal) took while we
    measured, in cores. On a small shared machine a compile next door can stall
    a 2-thread parallel_for for a whole scheduler tick, so rows measured under
    foreign load are retried and flagged. None where /proc/stat is missing."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: all but idle and iowait
        busy = sum(fields[:8]) - fields[3] - fields[4]
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # all our threads
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self.wall0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()

    def cores(self) -> float | None:
        busy = self._busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.wall0
        foreign = (busy - self.busy0) - (self._own_s() - self.own0)
        return max(0.0, foreign / max(wall, 1e-9))


class CpuTimer:
    method = "wall"

    def __init__(self, sample_s: float = 1e-3, min_reps: int = 5, max_reps: int = 200) -> None:
        self.sample_s = sample_s
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.notes: list[str] = []

    def _estimate(self, fn: Workload) -> float:
        calls, start = 0, time.perf_counter()
        while calls < 3 or (calls < 1000 and time.perf_counter() - start < 5e-3):
            fn()
            calls += 1
        return (time.perf_counter() - start) / calls

    def measure(
        self, workloads: dict[str, Workload], time_per_impl_s: float, small: bool = False
    ) -> dict[str, Stats]:
        calls = {n: max(1, round(self.sample_s / self._estimate(f))) for n, f in workloads.items()}

        def sampler(fn: Workload, k: int) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                return (time.perf_counter() - t0) / k

            return run

        samplers = {n: sampler(f, calls[n]) for n, f in workloads.items()}
        values = _interleave(
            samplers, time_per_impl_s * len(workloads), self.min_reps, self.max_reps
        )
        return {n: _summarize(values[n], calls[n], self.method) for n in workloads}

    def peak_memory(self, fn: Workload) -> int | None:
        return None  # see report.CPU_MEMORY_NOTE


class CudaTimer:
    def __init__(
        self,
        graph_calls: int = 32,
        min_reps: int = 10,
        max_reps: int = 200,
        use_graphs: bool = True,
    ) -> None:
        self.graph_calls = graph_calls
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.use_graphs = use_graphs
        self.notes: list[str] = []
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = int(getattr(props, "L2_cache_size", 0)) or 64 << 20  # unknown: assume a large L2
        self.flush_buffer = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def _events(self, body: Callable[[], object]) -> float:
        self.flush_buffer.zero_()  # evict the previous sample's data from L2
        self.start.record()
        body()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) * 1e-3

    def _sampler(
        self, name: str, fn: Workload, small: bool
    ) -> tuple[Callable[[], float], int, str]:
        if not small:
            return (lambda: self._events(fn)), 1, "events"
        k = self.graph_calls

        def loop() -> None:
            for _ in range(k):
                fn()

        if self.use_graphs:
            try:
                # Capture on the current stream: the benchmark runs everything on
                # one side stream, autograd's forward included, and backward ops
                # go to their forward's stream. The workload is already warm.
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=torch.cuda.current_stream()):
                    loop()
                graph.replay()
                torch.cuda.synchronize()
                return (lambda: self._events(graph.replay) / k), k, "graph"
            except Exception as exc:  # an op that syncs, or allocates pinned memory, ...
                torch.cuda.synchronize()
                self.notes.append(
                    f"{name}: CUDA graph capture failed ({type(exc).__name__}: "
                    f"{str(exc).strip()[:120]}); timed a loop of {k} calls between events "
                    "instead (includes launch overhead)"
                )
        return (lambda: self._events(loop) / k), k, "events-loop"

    def measure(
        self, workloads: dict[str, Workload], time_per_impl_s: float, small: bool = False
    ) -> dict[str, Stats]:
        """small: time graph replays of K calls (the row moves few bytes)."""
        torch.cuda.synchronize()
        plans = {n: self._sampler(n, f, small) for n, f in workloads.items()}
        samplers = {n: p[0] for n, p in plans.items()}
        values = _interleave(
            samplers, time_per_impl_s * len(workloads), self.min_reps, self.max_reps
        )
        return {n: _summarize(values[n], plans[n][1], plans[n][2]) for n in workloads}

    def peak_memory(self, fn: Workload) -> int | None:
        """Bytes allocated at the peak of one call beyond what was live before it."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak

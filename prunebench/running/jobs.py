"""`prunebench sweep --jobs auto`: how many runs train at once on this machine, and with how many threads.

The rule comes from measurement on this project's 2-core CPU (`leaderboards/method-cost.md`, section "End to
end", and `docs/cost.md`): a LeNet-sized run gains little from a second torch thread (a dense LeNet-300-100
run took about as long with 2 threads as with 1; the fused methods gained at most about 1.3x), while two
one-thread runs side by side each keep most of their one-thread speed. So on a CPU a sweep trains as many runs
at once as there are CPUs this process may use, one thread each (fewer runs than CPUs: the threads are shared
out between them). On CUDA the runs share the one device, one after another in this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class JobPlan:
    """Runs at once (1: in this process) and torch threads per run, with the reason, as the sweep prints it."""

    jobs: int
    threads: int
    why: str

    def describe(self) -> str:
        runs = "run" if self.jobs == 1 else "runs"
        threads = "thread" if self.threads == 1 else "threads"
        return f"--jobs auto: {self.jobs} {runs} at once, {self.threads} {threads} each ({self.why})"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as a container or `taskset` limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_jobs(pending: int, device_type: str, cpus: int | None = None) -> JobPlan:
    """What `--jobs auto` runs for `pending` runs to train on `device_type` ('cpu' or 'cuda')."""
    cpus = usable_cpus() if cpus is None else cpus
    if device_type == "cuda":
        return JobPlan(1, cpus, "one CUDA device: the runs take it one after another in this process")
    if pending <= 1:
        return JobPlan(1, cpus, f"{pending} run to train: it takes all {cpus} CPUs in this process")
    jobs = min(cpus, pending)
    return JobPlan(jobs, max(1, cpus // jobs),
                   f"{cpus} CPUs, {pending} runs to train: runs side by side finish a sweep sooner than one run "
                   "with more threads, which LeNet-sized networks barely use (docs/cost.md)")

"""Where a sweep's runs train: local worker processes, a Ray cluster, or Slurm through submitit.

Every executor hands `RunJob`s to `prunebench.running.worker.execute` somewhere and gives each result back to
the driver (`prunebench.running.sweep.run_sweep`), which alone writes the store. Results arrive as they
finish, through `Tracker.finished(job, record_or_error, wall_seconds)`.

- `LocalExecutor` (`--executor local --jobs N`, N > 1): one `python -m prunebench.running.worker` process per
  run, N at a time; Ctrl-C or SIGTERM to the driver sends them SIGTERM and their runs come back as
  'interrupted'. A worker whose driver dies without stopping it (SIGKILL) gets SIGTERM from Linux
  (`prunebench.running.worker.stop_with_parent`), so no orphan goes on training a run the next sweep restarts.
- `RayExecutor` (`--executor ray`, extra `prunebench[ray]`): one Ray task per run with the resources
  asked for (`--cpus-per-run`, fractional `--gpus-per-run`), on a local Ray instance or the cluster
  at `--ray-address` / `$RAY_ADDRESS`. A cluster that does not answer within `--ray-connect-timeout`
  (30 s) is a one-line `UserError` (Ray itself would retry for ever). A task whose worker or node dies is retried by Ray
  (`max_retries`) and continues from the run's checkpoint. A run without GPUs trains on the CPU
  (Ray leaves a GPU node's devices visible to tasks that asked for none).
- `SubmititExecutor` (`--executor submitit`, extra `prunebench[slurm]`): submitit's AutoExecutor,
  Slurm where `sbatch` exists and local processes elsewhere (or `cluster` forced), one job-array task
  per `runs_per_job` runs (packing short runs into one job). A preempted or timed-out Slurm job is
  requeued by submitit (the packed runs are checkpointable) and a job that died is resubmitted up to
  `retries` times; either way its runs continue from their checkpoints. Off Slurm (local processes)
  at most `array_parallelism` jobs run at once (default: the CPUs / `cpus_per_run`).

A run that comes back 'interrupted' although the sweep was not stopped (its worker got SIGTERM: a
drained Ray node, a Slurm preemption) is submitted again (Ray: up to `max_retries` times, submitit:
`retries`) and continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunebench.errors import MissingExtraError, UserError, describe
from prunebench.records import RunRecord
from prunebench.running.worker import PARENT_PID_ENV, RunJob, execute, execute_all

EXECUTORS = ("local", "ray", "submitit")
#: The extra that installs each optional executor's engine.
EXTRAS = {"ray": ("ray", "ray"), "submitit": ("submitit", "slurm")}


def require(executor: str) -> Any:
    """Import the engine of `executor` ('ray' or 'submitit') or say how to install it."""
    module, extra = EXTRAS[executor]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"--executor {executor} needs {module}: pip install 'prunebench[{extra}]'") from None


class Tracker:
    """What an executor reports to the driver."""

    def waiting(self, what: str) -> None:
        """What the executor waits for while no run reports (connecting, jobs queued); '' when it no longer waits."""

    def started(self, job: RunJob) -> None: ...
    def finished(self, job: RunJob, result: RunRecord | str, wall: float) -> None: ...
    def interrupted(self, job: RunJob, wall: float) -> None: ...


class Executor:
    name = "executor"

    def run(self, jobs: Sequence[RunJob], tracker: Tracker) -> None:
        """Run every job, reporting each result as it comes; on Ctrl-C stop the runs in flight (they keep
        their checkpoints), report them as interrupted and re-raise."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """N worker processes on this machine, each `python -m prunebench.running.worker JOB OUT`; CPU threads are
    shared out between them (OMP_NUM_THREADS, unless set)."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def run(self, jobs: Sequence[RunJob], tracker: Tracker) -> None:
        env = dict(os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        queue = list(jobs)
        live: list[tuple[RunJob, subprocess.Popen, Path, Path, float]] = []
        with tempfile.TemporaryDirectory(prefix="prunebench-sweep-") as tmp:
            try:
                while queue or live:
                    while queue and len(live) < self.jobs:
                        job = queue.pop(0)
                        job_file, out = Path(tmp) / f"{job.run_id}.job", Path(tmp) / f"{job.run_id}.out"
                        job_file.write_bytes(pickle.dumps(job))
                        command = [sys.executable, "-m", "prunebench.running.worker", str(job_file), str(out)]
                        with open(Path(tmp) / f"{job.run_id}.log", "wb") as log:
                            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                        live.append((job, proc, out, Path(tmp) / f"{job.run_id}.log", time.perf_counter()))
                        tracker.started(job)
                    time.sleep(0.2)
                    still = []
                    for item in live:
                        job, proc, out, log, start = item
                        if proc.poll() is None:
                            still.append(item)
                        else:
                            tracker.finished(job, _read_result(out, log, proc.returncode), time.perf_counter() - start)
                    live = still
            except KeyboardInterrupt:
                for _job, proc, *_ in live:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)  # the harness stores the run as 'interrupted'
                for job, proc, out, log, start in live:
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    result = _read_result(out, log, proc.returncode)
                    if isinstance(result, RunRecord):
                        tracker.finished(job, result, time.perf_counter() - start)
                    else:
                        tracker.interrupted(job, time.perf_counter() - start)
                raise


def _read_result(out: Path, log: Path, returncode: int) -> RunRecord | str:
    if out.exists():
        return pickle.loads(out.read_bytes())
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) if log.exists() else ""
    return f"worker exited with code {returncode}: {tail[-400:]}"


def _came_back_interrupted(result: RunRecord | str) -> bool:
    """The worker stopped the run (SIGTERM) and returned its record: it continues from its checkpoint."""
    return isinstance(result, RunRecord) and result.status == "interrupted"


#: How long a sweep waits for the Ray cluster at `--ray-address` to answer (`--ray-connect-timeout`).
RAY_CONNECT_SECONDS = 30.0
#: Ray Client's port when a ray:// address names none.
RAY_CLIENT_PORT = 10001


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a Ray address names: 'head:6379' (the GCS port), 'ray://head:10001' (Ray Client;
    port 10001 when left out), '[::1]:6379'. None for 'auto' and 'local', which Ray resolves itself."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    scheme, _, rest = text.rpartition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon and scheme == "ray":
        host, port = rest.rstrip("/"), str(RAY_CLIENT_PORT)
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST[:PORT], 'auto' or 'local'")
    return host.strip("[]"), int(port)


def _no_cluster(address: str, why: str) -> UserError:
    return UserError(f"no Ray cluster answers at {address} ({why}): start one with `ray start --head` and pass the "
                     "address it prints, or leave out --ray-address and $RAY_ADDRESS to start a local Ray instance "
                     "for the sweep (--ray-connect-timeout sets the wait)")


def wait_for_endpoint(address: str, timeout: float) -> None:
    """Return once something accepts a TCP connection at the host and port `address` names, trying for `timeout`
    seconds; else raise UserError naming the address. Ctrl-C and SIGTERM stop the wait (it is Python, not Ray's
    C++ retry loop)."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(endpoint, timeout=max(0.05, min(2.0, left))):
                return
        except socket.gaierror as exc:
            raise _no_cluster(address, f"cannot resolve {endpoint[0]!r}: {exc.strerror}") from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise _no_cluster(address, f"{why} for {timeout:g} s")
        time.sleep(min(0.5, left))


class RayExecutor(Executor):
    """One Ray task per run. `address` None: `$RAY_ADDRESS` if set, else a local Ray instance started
    for the sweep (and stopped after it). A Ray session this process already holds is used as it is.
    A cluster at `address` that does not accept a connection within `connect_timeout` seconds raises
    UserError (Ray's own connection retries go on for ever)."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 max_retries: int = 3, connect_timeout: float = RAY_CONNECT_SECONDS) -> None:
        if cpus_per_run <= 0 or gpus_per_run < 0 or max_retries < 0 or connect_timeout <= 0:
            raise ValueError("--cpus-per-run and --ray-connect-timeout must be > 0, --gpus-per-run and --retries >= 0")
        self.ray = require("ray")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address is not None:
            ray_endpoint(self.address)  # a malformed address fails before anything runs
        self.cpus_per_run, self.gpus_per_run, self.max_retries = cpus_per_run, gpus_per_run, max_retries
        self.connect_timeout = connect_timeout

    def _connect(self, tracker: Tracker) -> None:
        """ray.init: a local instance in this thread; a cluster's address is first checked to accept connections,
        then connected to from a helper thread that the sweep stops waiting for after `connect_timeout` (an
        address that accepts connections but is no Ray head would keep ray.init retrying for ever)."""
        ray = self.ray
        if self.address is None:
            tracker.waiting("starting a local Ray instance")
            ray.init(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
            return
        tracker.waiting(f"connecting to Ray at {self.address}")
        start = time.monotonic()
        wait_for_endpoint(self.address, self.connect_timeout)
        done, failure = threading.Event(), []

        def connect() -> None:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except BaseException as exc:  # noqa: BLE001 - reported by the sweep's thread
                failure.append(exc)
            finally:
                done.set()

        worker_log = logging.getLogger("ray._private.worker")  # "SIGTERM handler is not set ... not the main thread"
        level = worker_log.level
        worker_log.setLevel(logging.ERROR)
        try:
            threading.Thread(target=connect, name="ray-connect", daemon=True).start()
            while not done.wait(0.2):
                if time.monotonic() - start > self.connect_timeout:
                    raise _no_cluster(self.address, f"it accepts connections but no Ray head answered in "
                                      f"{self.connect_timeout:g} s")
        finally:
            worker_log.setLevel(level)
        if failure:
            raise UserError(f"cannot connect to Ray at {self.address}: {describe(failure[0])}")

    def _room(self) -> str:
        """How many runs the cluster can hold at once with the resources each asks for."""
        resources = self.ray.cluster_resources()
        fits = [resources.get("CPU", 0) / self.cpus_per_run]
        if self.gpus_per_run:
            fits.append(resources.get("GPU", 0) / self.gpus_per_run)
        room = int(min(fits) + 1e-9)
        if room == 0:
            return (f"the cluster has no room for a run of {self.cpus_per_run:g} CPUs and {self.gpus_per_run:g} GPUs: "
                    "the runs wait for such a node to join")
        return f"room for {room} at once"

    def run(self, jobs: Sequence[RunJob], tracker: Tracker) -> None:
        ray = self.ray
        started_here = not ray.is_initialized()
        handlers = _signal_handlers()
        try:
            if started_here:
                self._connect(tracker)
            remote = ray.remote(execute).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                 max_retries=self.max_retries, retry_exceptions=False)
            pending: dict[Any, tuple[RunJob, int, float]] = {}  # task -> (job, attempt, first start)
            where = self.address or "a local instance"
            try:
                for job in jobs:
                    job = fit_to_resources(job, self.cpus_per_run, self.gpus_per_run)
                    pending[remote.remote(job)] = (job, 0, time.perf_counter())
                    tracker.started(job)
                tracker.waiting(f"{len(pending)} runs with Ray at {where}, {self._room()}")
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in ready:
                        job, attempt, start = pending.pop(ref)
                        result = self._result(ref)
                        if _came_back_interrupted(result) and attempt < self.max_retries:
                            pending[remote.remote(job)] = (job, attempt + 1, start)
                            continue
                        tracker.finished(job, result, time.perf_counter() - start)
                    if ready and pending:
                        tracker.waiting(f"{len(pending)} runs with Ray at {where}, {self._room()}")
            except KeyboardInterrupt:
                for ref, (job, _attempt, start) in pending.items():
                    ray.cancel(ref)  # the run keeps its checkpoint; the next sweep continues it
                    tracker.interrupted(job, time.perf_counter() - start)
                raise
        finally:
            tracker.waiting("")
            if started_here and ray.is_initialized():
                ray.shutdown()
            _restore_signal_handlers(handlers)  # ray.init replaces SIGTERM's, and shutdown leaves it

    def _result(self, ref: Any) -> RunRecord | str:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the run could not start (WorkerError)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return describe(cause)
        except ray.exceptions.RayError as exc:  # worker or node lost more than max_retries times
            return describe(exc)


def _signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def fit_to_resources(job: RunJob, cpus: float, gpus: float) -> RunJob:
    """The job as a Ray task or Slurm job runs it: torch threads = its CPUs (unless the job sets them), and
    on the CPU unless it was given GPUs (Ray leaves a node's GPUs visible to a task that asked for none)."""
    if job.threads is None:
        job = dataclasses.replace(job, threads=max(1, int(cpus)))
    if job.device is None and gpus == 0:
        job = dataclasses.replace(job, device="cpu")
    return job


class PackedRuns:
    """A submitit job: several runs one after another. Checkpointable: when Slurm preempts or times out
    the job, submitit calls `checkpoint` and requeues the same call; in the requeued job, runs that had
    finished return their kept records (`worker.finished_record_path`) and the others continue from
    their checkpoints."""

    def __init__(self, jobs: list[RunJob]) -> None:
        self.jobs = jobs

    def __call__(self) -> list[RunRecord | str]:
        return execute_all(self.jobs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        submitit = require("submitit")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _whole(value: float, name: str, minimum: int) -> int:
    if float(value) != int(value) or int(value) < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum} for submitit, got {value:g}")
    return int(value)


class SubmititExecutor(Executor):
    """Slurm (or local processes) through submitit's AutoExecutor; one job-array task per pack of
    `runs_per_job` runs. `cluster` None: submitit's choice (Slurm where `sbatch` exists, else local).
    `array_parallelism`: the job array's running tasks at once on Slurm (default: submitit's); off Slurm
    the jobs running at once (default: the CPUs / `cpus_per_run`)."""

    name = "submitit"

    def __init__(self, folder: Path | str, cluster: str | None = None, partition: str | None = None,
                 time_limit_min: int = 240, cpus_per_run: float = 1, gpus_per_run: float = 0, runs_per_job: int = 1,
                 array_parallelism: int | None = None, retries: int = 1, poll_seconds: float = 1.0) -> None:
        cpus, gpus = _whole(cpus_per_run, "--cpus-per-run", 1), _whole(gpus_per_run, "--gpus-per-run", 0)
        if runs_per_job < 1 or time_limit_min < 1 or retries < 0 or (array_parallelism is not None
                                                                       and array_parallelism < 1):
            raise ValueError("--runs-per-job, --time-limit and --array-parallelism must be >= 1, --retries >= 0")
        self.submitit = require("submitit")
        self.folder, self.cluster, self.runs_per_job = Path(folder), cluster, runs_per_job
        self.retries, self.poll_seconds, self.array_parallelism = retries, poll_seconds, array_parallelism
        self.cpus_per_run, self.gpus_per_run = cpus, gpus
        self.parameters: dict[str, Any] = {"timeout_min": time_limit_min, "cpus_per_task": cpus, "name": "prunebench"}
        if gpus:
            self.parameters["gpus_per_node"] = gpus
        self.slurm_parameters: dict[str, Any] = {}
        if array_parallelism is not None:
            self.slurm_parameters["slurm_array_parallelism"] = array_parallelism
        if partition:
            self.slurm_parameters["slurm_partition"] = partition

    def _executor(self) -> Any:
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        parameters = dict(self.parameters)
        if executor.cluster == "slurm":
            parameters.update(self.slurm_parameters)
        executor.update_parameters(**parameters)
        return executor

    def run(self, jobs: Sequence[RunJob], tracker: Tracker) -> None:
        executor = self._executor()
        limit = None if executor.cluster == "slurm" else (
            self.array_parallelism or max(1, (os.cpu_count() or 1) // self.cpus_per_run))
        jobs = [fit_to_resources(job, self.cpus_per_run, self.gpus_per_run) for job in jobs]
        # packs waiting to be submitted: (runs, attempt, first start or None)
        queue: list[tuple[list[RunJob], int, float | None]] = [
            (jobs[i:i + self.runs_per_job], 0, None) for i in range(0, len(jobs), self.runs_per_job)]
        live: list[tuple[Any, list[RunJob], int, float]] = []  # (submitit job, its runs, attempt, first start)

        def submit() -> None:
            count = len(queue) if limit is None else max(0, limit - len(live))
            batch, queue[:] = queue[:count], queue[count:]
            if not batch:
                return
            with executor.batch():  # one Slurm job array
                handles = [executor.submit(PackedRuns(pack)) for pack, _attempt, _first in batch]
            now = time.perf_counter()
            for handle, (pack, attempt, first) in zip(handles, batch, strict=True):
                live.append((handle, pack, attempt, now if first is None else first))
                if first is None:
                    for job in pack:
                        tracker.started(job)

        def report_queue() -> None:
            tracker.waiting(_queue_line(executor.cluster, [handle for handle, *_ in live], len(queue)))

        try:
            tracker.waiting(f"submitting {len(queue)} jobs to {'Slurm' if executor.cluster == 'slurm' else 'submitit'}")
            submit()
            report_queue()
            while live or queue:
                time.sleep(self.poll_seconds)
                still = []
                for handle, pack, attempt, start in live:
                    if not handle.done():
                        still.append((handle, pack, attempt, start))
                        continue
                    wall = time.perf_counter() - start
                    try:
                        results = handle.result()
                    except Exception as exc:  # noqa: BLE001 - the job died: resubmit or report its runs
                        if attempt < self.retries:
                            queue.append((pack, attempt + 1, start))
                            continue
                        results = [f"submitit job {handle.job_id} failed: {describe(exc)}"] * len(pack)
                    again = [job for job, result in zip(pack, results, strict=True)
                             if _came_back_interrupted(result) and attempt < self.retries]
                    if again:
                        queue.append((again, attempt + 1, start))
                    retried = {job.run_id for job in again}
                    for job, result in zip(pack, results, strict=True):
                        if job.run_id not in retried:
                            tracker.finished(job, result, wall / len(pack))
                live[:] = still
                submit()
                report_queue()
        except KeyboardInterrupt:
            for handle, pack, _attempt, start in live:
                handle.cancel(check=False)  # the runs keep their checkpoints
                for job in pack:
                    tracker.interrupted(job, time.perf_counter() - start)
            for pack, _attempt, start in queue:
                if start is not None:  # resubmissions: their runs had started
                    for job in pack:
                        tracker.interrupted(job, time.perf_counter() - start)
            raise
        finally:
            tracker.waiting("")


def _queue_line(cluster: str, handles: Sequence[Any], waiting: int) -> str:
    """'Slurm: 3 jobs queued, 2 running (array 1234)', or for submitit's local processes how many run and wait."""
    states = [str(handle.state).upper() for handle in handles]
    queued = sum(state.startswith(("PENDING", "REQUEUED", "CONFIGURING")) for state in states)
    if cluster == "slurm":
        arrays = sorted({str(handle.job_id).split("_")[0] for handle in handles})
        named = f" (job {', '.join(arrays[:3])}{' ...' if len(arrays) > 3 else ''})" if arrays else ""
        return f"Slurm: {queued} jobs queued, {len(states) - queued} running{named}" + (
            f", {waiting} to resubmit" if waiting else "")
    return f"submitit {cluster}: {len(states) - queued} jobs running, {queued + waiting} waiting for a free slot"


def make_executor(name: str, *, jobs: int = 1, folder: Path | None = None, **options: Any) -> Executor:
    """The executor called `name` with the sweep's options; those of other executors, and None values,
    are ignored. `retries` is Ray's `max_retries` and submitit's resubmissions."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        return LocalExecutor(jobs)
    if name == "ray":
        if "retries" in options:
            options["max_retries"] = options.pop("retries")
        keys = ("address", "cpus_per_run", "gpus_per_run", "max_retries", "connect_timeout")
        return RayExecutor(**{k: v for k, v in options.items() if k in keys})
    if name == "submitit":
        keys = ("cluster", "partition", "time_limit_min", "cpus_per_run", "gpus_per_run", "runs_per_job",
                "array_parallelism", "retries")
        chosen = {k: v for k, v in options.items() if k in keys}
        return SubmititExecutor(folder or Path("prunebench.submitit"), **chosen)
    raise ValueError(f"unknown executor {name!r}; choose from: {', '.join(EXECUTORS)}")

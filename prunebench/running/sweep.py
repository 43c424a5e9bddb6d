"""Sweeps: the cross product methods x tasks x seeds x grid, run into the result store.

- Grid: `{"lam": ["1e-4", "3e-4"], "tau": [...]}`, parsed from `lambda=1e-4,3e-4` (`lambda` is an
  alias of `lam`; any other name is the hyperparameter's own). Values are comma-separated; for a
  per-layer (tuple-valued) hyperparameter they are separated by `;` and a value's layers by `,`
  (`c_rate=1,3,4,2.5;2,3,4,2.5`). A grid key no method in the sweep has is an error (a typo); a key
  some methods lack is ignored for those methods (they run with their defaults once, noted in the plan).
- `dense`, the accuracy reference of every leaderboard row, is added for each task and seed unless
  `with_dense=False`.
- Identities already finished in the store are skipped; running (left over from a killed process),
  interrupted ones continue from their last checkpoint and failed ones run again from the start.
- `jobs=1` trains in this process; otherwise an executor (`prunebench.running.executors`: N local worker
  processes, Ray, or submitit) trains the runs and sends back their records, which this process alone
  writes to the store.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from prunebench import harness
from prunebench.checkpoint import checkpoint_dir
from prunebench.evaluation import Evaluation
from prunebench.observers import Observer
from prunebench.pruner import REGISTRY
from prunebench.records import RunRecord
from prunebench.registry import method_names
from prunebench.request import RunRequest, RunSpec
from prunebench.running.executors import Executor, LocalExecutor, Tracker
from prunebench.running.runner import train_requests
from prunebench.running.worker import RunJob, discard_finished_record
from prunebench.setting import setting_items, setting_string
from prunebench.store import ResultStore
from prunebench.tensorboard import require_tensorboard

GRID_ALIASES = {"lambda": "lam"}


def _hparam_field(name: str) -> dataclasses.Field | None:
    method_names()
    for cls in REGISTRY.values():
        for f in dataclasses.fields(cls.hparams_class):
            if f.name == name:
                return f
    return None


def _method_has(method: str, name: str) -> bool:
    method_names()
    return any(f.name == name for f in dataclasses.fields(REGISTRY[method].hparams_class))


def _is_per_layer(f: dataclasses.Field) -> bool:
    return isinstance(f.default, tuple)


def convert_value(f: dataclasses.Field, text: str) -> Any:
    """A grid value as the CLI would pass it: bool/int/float by the field's default; strings (and
    per-layer values such as '1,3,4') as they are, for the hyperparameter dataclass to parse."""
    default = f.default
    if "choices" in f.metadata or isinstance(default, (str, tuple)):
        return text
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: {text!r} is not a boolean")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if not number.is_integer():
                raise ValueError(f"{f.name}: {text!r} is not a whole number") from None
            return int(number)
    if isinstance(default, float):
        return float(text)
    return text


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """['lambda=1e-4,3e-4', 'tau=0.03'] -> {'lam': ['1e-4', '3e-4'], 'tau': ['0.03']} (strings kept)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"bad grid item {item!r}: use name=value1,value2 (e.g. lambda=1e-4,3e-4)")
        key, _, values = item.partition("=")
        key = key.strip().replace("-", "_")
        key = GRID_ALIASES.get(key, key)
        f = _hparam_field(key)
        if f is None:
            raise ValueError(f"no method has a hyperparameter {key!r} (grid item {item!r})")
        sep = ";" if _is_per_layer(f) else ","
        parsed = [v.strip() for v in values.split(sep) if v.strip()]
        if not parsed:
            raise ValueError(f"grid item {item!r} has no values")
        for v in parsed:
            convert_value(f, v)  # fail early on a malformed number
        grid.setdefault(key, [])
        grid[key] += [v for v in parsed if v not in grid[key]]
    return grid


@dataclass
class PlannedRun:
    spec: RunSpec
    setting: str
    status_before: str | None   # the store's status before the sweep: None (new) or its status
    request: RunRequest         # what a worker resolves again

    @property
    def to_run(self) -> bool:
        return self.status_before != "finished"

    @property
    def label(self) -> str:
        setting = "" if self.setting == "default" else f" [{self.setting}]"
        return f"{self.spec.method}{setting} on {self.spec.task.name} seed {self.spec.seed}"


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    notes: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.to_run]

    @property
    def finished_before(self) -> list[PlannedRun]:
        return [r for r in self.runs if not r.to_run]


def plan_sweep(methods: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
               grid: dict[str, list[str]] | None = None, store: ResultStore | None = None, *,
               iterations: int | None = None, eval_every: int | None = None, budget: str = "equal",
               with_dense: bool = True, protocol: dict[str, Any] | None = None) -> SweepPlan:
    """Resolve the cross product into validated RunSpecs (errors raise before anything trains),
    deduplicated by identity, ordered task > seed > method > grid, with each identity's store status.
    `protocol` overrides protocol fields of every run (dense included), as in `make_spec`."""
    grid = dict(grid or {})
    methods = list(dict.fromkeys(methods))
    if with_dense and "dense" not in methods:
        methods = ["dense", *methods]
    for m in methods:
        if m not in method_names():
            raise KeyError(f"unknown method {m!r}; choose from: {', '.join(method_names())}")
    notes = []
    for key in grid:
        lacking = [m for m in methods if not _method_has(m, key)]
        if len(lacking) == len(methods):
            raise ValueError(f"none of the methods {', '.join(methods)} has a hyperparameter {key!r}")
        if lacking:
            notes.append(f"{key}: not a hyperparameter of {', '.join(lacking)}; ignored for "
                         f"{'it' if len(lacking) == 1 else 'them'}")
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    for task in tasks:
        for seed in seeds:
            for method in methods:
                keys = [k for k in grid if _method_has(method, k)]
                for combo in itertools.product(*(grid[k] for k in keys)):
                    overrides = dict(zip(keys, combo, strict=True))
                    fields = {k: _hparam_field(k) for k in keys}
                    values = {k: convert_value(fields[k], v) for k, v in overrides.items()}
                    request = RunRequest(task, method, seed, values, iterations, eval_every, budget, protocol)
                    spec = request.resolve()
                    run_id, identity = spec.identity
                    if run_id in seen:
                        continue
                    seen.add(run_id)
                    hp, proto = setting_items(task, method, identity)
                    status = store.status(run_id) if store is not None else None
                    runs.append(PlannedRun(spec, setting_string(hp, proto), status, request))
    return SweepPlan(runs, notes)


@dataclass
class Outcome:
    run: PlannedRun
    status: str                 # finished | skipped | failed | interrupted
    final: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_seconds: float = 0.0


@dataclass
class SweepReport:
    outcomes: list[Outcome]
    elapsed: float
    interrupted: bool = False
    pending: int = 0            # identities that were to run (not finished before the sweep)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def not_started(self) -> int:
        return self.pending - sum(o.run.to_run for o in self.outcomes)


class _SweepObserver(Observer):
    """Per-run progress inside the overall bar (jobs=1): fractional runs done and the current metrics."""

    def __init__(self, progress: Progress, overall: Any, done: float, label: str) -> None:
        self.progress, self.overall, self.done, self.label = progress, overall, done, escape(label)
        self.total = 1

    def start(self, spec: RunSpec, total_steps: int) -> None:
        self.total = max(total_steps, 1)
        self.progress.update(self.overall, current=self.label)

    def step(self, step: int) -> None:
        if step % 50 == 0:
            self.progress.update(self.overall, completed=self.done + step / self.total)

    def evaluation(self, point: Evaluation) -> None:
        self.progress.update(self.overall, completed=self.done + point.step / self.total, current=(
            f"{self.label}: step {point.step:,}, acc {100 * point.accuracy:.2f}%, "
            f"CR {point.compression:.1f}x"))


def _progress(console: Console) -> Progress:
    # A long estimate window: runs take minutes, and rich forgets speed samples older than the window.
    return Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                    TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                    TextColumn("{task.fields[current]}"), console=console, speed_estimate_period=7 * 24 * 3600)


def run_sweep(plan: SweepPlan, db: Path | str, data_dir: Path | str, *, device: str | None = None,
              jobs: int = 1, console: Console | None = None,
              on_outcome: Callable[[Outcome], None] | None = None,
              allow_unverified_data: bool = False, executor: Executor | None = None,
              checkpoints: Path | str | None = None,
              checkpoint_seconds: float | None = harness.CHECKPOINT_SECONDS,
              tensorboard: Path | str | None = None) -> SweepReport:
    """Run every pending identity of `plan` into the store at `db`; finished ones are reported as skipped.

    `executor` None with `jobs=1` trains in this process; otherwise the runs go to `executor` (default:
    `LocalExecutor(jobs)`), whose workers send back records that this process alone writes to the store.
    `checkpoints`: the directory every worker checkpoints into (default beside the store; on a cluster
    it must be one that every worker sees). Ctrl-C (or SIGTERM) stops the sweep: the run(s) in flight
    are stored as 'interrupted' (or, when their worker could not say, keep their checkpoints), and the
    report comes back with `interrupted=True`. `allow_unverified_data`: as for `harness.train`.
    `tensorboard`: every run streams its evaluation points to its own directory under this one
    (`prunebench.tensorboard`; like `checkpoints`, a directory the workers see); MissingExtraError before
    anything runs when the extra is not installed."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    console = console or Console(stderr=True)
    checkpoints = Path(checkpoints) if checkpoints is not None else checkpoint_dir(Path(db))
    if tensorboard is not None:
        require_tensorboard()
        tensorboard = Path(tensorboard).absolute()
    t0 = time.perf_counter()
    outcomes = []
    if plan.finished_before:
        store = ResultStore(db)
        try:
            outcomes = [Outcome(r, "skipped", store.final_row(r.spec.run_id) or {}) for r in plan.finished_before]
        finally:
            store.close()
    pending = plan.pending
    progress = _progress(console)
    overall = progress.add_task("sweep", total=len(pending), current="")
    interrupted = False

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        colour = {"finished": "green", "failed": "red", "interrupted": "yellow"}.get(outcome.status, "white")
        progress.console.print(f"[{colour}]{outcome.status}[/] {escape(outcome.run.label)}"
                               + (f": {escape(outcome.error)}" if outcome.error else ""))

    planned = {p.request.run_id: p for p in pending}
    options = harness.TrainOptions(device=device, allow_unverified_data=allow_unverified_data,
                                   checkpoints=checkpoints, checkpoint_seconds=checkpoint_seconds)
    store = ResultStore(db)
    driver = _Driver(store, planned, progress, overall, record)
    if executor is None and jobs == 1:  # in this process
        where = dict(specs={k: p.spec for k, p in planned.items()}, observer_for=driver.observer,
                     on_result=driver.result, on_error=driver.error)
    else:
        where = dict(executor=executor or LocalExecutor(jobs), tracker=driver,
                     label_for=lambda r: planned[r.run_id].label)
    with progress:
        try:
            train_requests([p.request for p in pending], store, Path(data_dir), options, tensorboard=tensorboard,
                           **where)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            store.close()
    return SweepReport(outcomes, time.perf_counter() - t0, interrupted, len(pending))


class _Driver(Tracker):
    """The sweep's side of the runner: in this process, an observer and the outcome of each run; through an
    executor, applies each worker's record to the store (the only writer)."""

    def __init__(self, store: ResultStore, planned: dict[str, PlannedRun], progress: Progress, overall: Any,
                 record: Callable[[Outcome], None]) -> None:
        self.store, self.planned, self.progress, self.overall, self.record = store, planned, progress, overall, record
        self.live: dict[str, str] = {}
        self.done = 0
        self.waits = ""

    def waiting(self, what: str) -> None:
        if what and what != self.waits and not self.progress.console.is_terminal:
            self.progress.console.print(escape(what))  # a log has no live progress line
        self.waits = what
        self.progress.update(self.overall, current=self._current())

    def started(self, job: RunJob) -> None:
        self.live[job.run_id] = job.label
        self.progress.update(self.overall, current=self._current())

    def _current(self, shown: int = 2) -> str:
        """What the executor waits for (connecting, jobs queued), else the runs in flight (an executor may
        start all of them at once: a few named, then a count)."""
        if self.waits:
            return escape(self.waits)
        labels = list(self.live.values())
        more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
        return escape(", ".join(labels[:shown]) + more)

    def _end(self, run_id: str) -> PlannedRun:
        self.live.pop(run_id, None)
        self.done += 1
        self.progress.update(self.overall, completed=self.done, current=self._current())
        return self.planned[run_id]

    def observer(self, request: RunRequest) -> Observer:
        return _SweepObserver(self.progress, self.overall, self.done, self.planned[request.run_id].label)

    def result(self, request: RunRequest, result: harness.RunResult, wall: float) -> None:
        self.record(Outcome(self._end(request.run_id), "skipped" if result.skipped else result.status,
                            dict(result.final), result.error, wall))

    def error(self, request: RunRequest, exc: BaseException, wall: float) -> None:
        stop = isinstance(exc, KeyboardInterrupt)
        self.record(Outcome(self._end(request.run_id), "interrupted" if stop else "failed",
                            error="interrupted" if stop else f"{type(exc).__name__}: {exc}", wall_seconds=wall))

    def finished(self, job: RunJob, result: RunRecord | str, wall: float) -> None:
        planned = self._end(job.run_id)
        if isinstance(result, str):  # the run could not start, or its worker died for good: nothing to store
            self.record(Outcome(planned, "failed", error=result, wall_seconds=wall))
            return
        if result.run_id != job.run_id:
            self.record(Outcome(planned, "failed", error=f"worker returned run {result.run_id}, expected "
                                f"{job.run_id}", wall_seconds=wall))
            return
        self.store.apply(result)
        discard_finished_record(job)
        self.record(Outcome(planned, result.status, result.summary(), result.run.get("error"), wall))

    def interrupted(self, job: RunJob, wall: float) -> None:
        self.record(Outcome(self._end(job.run_id), "interrupted", error="interrupted", wall_seconds=wall))


def summary_table(report: SweepReport) -> Table:
    counts = {s: report.count(s) for s in ("finished", "skipped", "failed", "interrupted")}
    title = (f"sweep: {counts['finished']} run, {counts['skipped']} skipped (already finished), "
             f"{counts['failed']} failed, {counts['interrupted']} interrupted in {report.elapsed:,.0f} s")
    if report.not_started:
        title += f"; {report.not_started} not started"
    table = Table(title=title)
    for col in ("task", "method", "setting", "seed", "status", "accuracy", "compression", "train s"):
        table.add_column(col, justify="right" if col in ("seed", "accuracy", "compression", "train s") else "left")
    order = {"failed": 0, "interrupted": 1, "finished": 2, "skipped": 3}
    for o in sorted(report.outcomes, key=lambda o: (o.run.spec.task.name, o.run.spec.method, o.run.setting,
                                                    o.run.spec.seed, order.get(o.status, 9))):
        f = o.final
        acc = f"{100 * f['accuracy']:.2f}%" if f.get("accuracy") is not None else "-"
        cr = f"{f['compression']:.1f}x" if f.get("compression") is not None else "-"
        secs = f"{f['train_seconds']:.1f}" if f.get("train_seconds") is not None else "-"
        status = o.status if not o.error or o.status == "interrupted" else f"{o.status}: {o.error}"
        table.add_row(o.run.spec.task.name, o.run.spec.method, o.run.setting, str(o.run.spec.seed), status,
                      acc, cr, secs)
    return table

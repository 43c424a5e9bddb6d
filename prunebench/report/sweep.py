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
- `jobs=1` trains in this process; `jobs=N` runs N worker processes at once, each `python -m
  prunebench.cli run ... --json` (its stdout/stderr kept in a log file, its result read back from the store).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
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
from prunebench.data import DataUnavailableError, TensorDataset
from prunebench.harness import Observer, RunSpec, make_spec
from prunebench.pruner import REGISTRY, method_names
from prunebench.report.setting import CLI_PROTOCOL_FLAGS, setting_items, setting_string
from prunebench.store import ResultStore

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
    overrides: dict[str, str]   # grid values as given, for `prunebench run` flags
    setting: str
    status_before: str | None   # the store's status before the sweep: None (new) or its status

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
                    spec = make_spec(task, method, seed, values, iterations, eval_every, budget, protocol=protocol)
                    run_id, identity = spec.identity
                    if run_id in seen:
                        continue
                    seen.add(run_id)
                    hp, proto = setting_items(task, method, identity)
                    status = store.status(run_id) if store is not None else None
                    runs.append(PlannedRun(spec, overrides, setting_string(hp, proto), status))
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

    def evaluation(self, point: dict[str, Any]) -> None:
        self.progress.update(self.overall, completed=self.done + point["step"] / self.total, current=(
            f"{self.label}: step {point['step']:,}, acc {100 * point['accuracy']:.2f}%, "
            f"CR {point['compression']:.1f}x"))


def _progress(console: Console) -> Progress:
    # A long estimate window: runs take minutes, and rich forgets speed samples older than the window.
    return Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                    TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                    TextColumn("{task.fields[current]}"), console=console, speed_estimate_period=7 * 24 * 3600)


def run_sweep(plan: SweepPlan, db: Path | str, data_dir: Path | str, *, device: str | None = None,
              jobs: int = 1, console: Console | None = None,
              on_outcome: Callable[[Outcome], None] | None = None,
              allow_unverified_data: bool = False) -> SweepReport:
    """Run every pending identity of `plan` into the store at `db`; finished ones are reported as skipped.
    Ctrl-C (or SIGTERM) stops the sweep: the run(s) in flight are stored as 'interrupted' and the
    report comes back with `interrupted=True`. `allow_unverified_data`: as for `harness.train`."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    console = console or Console(stderr=True)
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

    with progress:
        try:
            if jobs == 1:
                _run_in_process(pending, Path(db), Path(data_dir), device, progress, overall, record,
                                allow_unverified_data)
            else:
                _run_in_workers(pending, Path(db), Path(data_dir), device, jobs, progress, overall, record,
                                allow_unverified_data)
        except KeyboardInterrupt:
            interrupted = True
    return SweepReport(outcomes, time.perf_counter() - t0, interrupted, len(pending))


def _run_in_process(pending: list[PlannedRun], db: Path, data_dir: Path, device: str | None,
                    progress: Progress, overall: Any, record: Callable[[Outcome], None],
                    allow_unverified_data: bool = False) -> None:
    datasets: dict[str, TensorDataset | None] = {}  # resident data loaded once per task; None: streamed
    store = ResultStore(db)
    try:
        for done, planned in enumerate(pending):
            spec = planned.spec
            start = time.perf_counter()
            try:
                if spec.task.name not in datasets:
                    datasets[spec.task.name] = spec.task.resident_data(data_dir, allow_unverified_data)
                result = harness.train(spec, store, data_dir, device=device, dataset=datasets[spec.task.name],
                                       observer=_SweepObserver(progress, overall, done, planned.label),
                                       allow_unverified_data=allow_unverified_data)
            except KeyboardInterrupt:
                record(Outcome(planned, "interrupted", error="interrupted", wall_seconds=time.perf_counter() - start))
                raise
            except DataUnavailableError:
                raise  # every run of this task would fail alike: stop and say why
            except Exception as exc:  # noqa: BLE001 - one failed run must not end the sweep
                record(Outcome(planned, "failed", error=f"{type(exc).__name__}: {exc}",
                               wall_seconds=time.perf_counter() - start))
            else:
                status = "skipped" if result.skipped else result.status
                record(Outcome(planned, status, dict(result.final), result.error, time.perf_counter() - start))
            progress.update(overall, completed=done + 1)
    finally:
        store.close()


def run_command(planned: PlannedRun, db: Path, data_dir: Path, device: str | None,
                allow_unverified_data: bool = False) -> list[str]:
    """The `prunebench run` command line (as a worker process) for one planned run."""
    spec = planned.spec
    cmd = [sys.executable, "-m", "prunebench.cli", "run", "--method", spec.method, "--task", spec.task.name,
           "--seed", str(spec.seed), "--budget", spec.budget, "--iterations", str(spec.protocol.iterations),
           "--eval-every", str(spec.protocol.eval_every), "--db", str(db), "--data-dir", str(data_dir), "--json"]
    for key, flag in CLI_PROTOCOL_FLAGS.items():
        value = getattr(spec.protocol, key)
        if key != "iterations" and value is not None:  # iterations: given above; None: not set
            cmd += [flag, value if isinstance(value, str) else repr(value)]
    if device:
        cmd += ["--device", device]
    if allow_unverified_data:
        cmd.append("--allow-unverified-data")
    for key, value in planned.overrides.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    return cmd


def _run_in_workers(pending: list[PlannedRun], db: Path, data_dir: Path, device: str | None, jobs: int,
                    progress: Progress, overall: Any, record: Callable[[Outcome], None],
                    allow_unverified_data: bool = False) -> None:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # N processes share the cores instead of each taking them all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    queue = list(pending)
    live: list[tuple[PlannedRun, subprocess.Popen, Path, float]] = []
    done = 0
    with tempfile.TemporaryDirectory(prefix="prunebench-sweep-") as tmp:
        try:
            while queue or live:
                while queue and len(live) < jobs:
                    planned = queue.pop(0)
                    log = Path(tmp) / f"{planned.spec.run_id}.log"
                    with open(log, "wb") as fh:
                        proc = subprocess.Popen(run_command(planned, db, data_dir, device, allow_unverified_data),
                                                stdout=fh,
                                                stderr=subprocess.STDOUT, env=env)
                    live.append((planned, proc, log, time.perf_counter()))
                progress.update(overall, current=escape(", ".join(p.label for p, *_ in live)))
                time.sleep(0.2)
                still = []
                for planned, proc, log, start in live:
                    if proc.poll() is None:
                        still.append((planned, proc, log, start))
                        continue
                    done += 1
                    record(_worker_outcome(planned, proc.returncode, log, db, time.perf_counter() - start))
                    progress.update(overall, completed=done)
                live = still
        except KeyboardInterrupt:
            for _planned, proc, _log, _start in live:
                if proc.poll() is None:
                    proc.terminate()  # SIGTERM: the harness stores the run as 'interrupted'
            for planned, proc, _log, start in live:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                record(Outcome(planned, "interrupted", error="interrupted", wall_seconds=time.perf_counter() - start))
            raise


def _worker_outcome(planned: PlannedRun, returncode: int, log: Path, db: Path, wall: float) -> Outcome:
    text = log.read_text(errors="replace")
    result: dict[str, Any] = {}
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    if result.get("run_id") and result["run_id"] != planned.spec.run_id:
        return Outcome(planned, "failed", error=f"worker ran identity {result['run_id']}, expected "
                       f"{planned.spec.run_id}", wall_seconds=wall)
    status = result.get("status") or ("interrupted" if returncode == 130 else "failed")
    if result.get("skipped"):
        status = "skipped"
    error = result.get("error")
    if status != "finished" and status != "skipped" and not error:
        tail = " | ".join(text.strip().splitlines()[-3:])
        error = f"exit code {returncode}: {tail[-400:]}"
    final = {k: result.get(k) for k in ("accuracy", "compression", "train_seconds", "iterations")} if result else {}
    return Outcome(planned, status, final, error, wall)


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

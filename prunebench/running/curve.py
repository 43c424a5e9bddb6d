"""Matched compression: for each method and target compression, the value of the method's compression knob
(`Pruner.knob`, `prunebench.knob`) whose deployed network lands within a tolerance of the target, found by a
bounded search on the first seed, then the remaining seeds trained at that value (`prunebench curve`).

The search moves along the knob's axis (log(value), or the value for a linear knob) and reads nothing of a
probe but the compression of its finished, stored run (`ResultStore.final_compression`): never accuracy, so
no setting is selected on the test set. It starts at the task's calibrated value (a sparsity knob, which sets
compression by construction: at 1 - 1/target, `CompressionKnob.sparsity`); with one probe it assumes
compression proportional to the knob (elasticity 1; a linear knob: 0.5 log-compression per unit); with two
it extrapolates along their secant, at most a factor of 10 (a quarter of a linear knob's range) a step; once
probes lie on both sides of the target, it interpolates in log-compression between the nearest two, kept
inside the middle 60% of the bracket so that it always shrinks. Every value is rounded to the knob's
significant digits (`round_knob`). A target beyond what the knob's limit reaches is *unreached*; one not
landed within `max_probes` probes is *exhausted*.

Nothing but the runs is saved: each probe is an ordinary stored run (a `RunRequest` with the knob in its
hyperparameters), and the search is deterministic given the compressions of the finished probes, so a cell's
state (probes so far, the chosen value, its status, the seed runs) is recomputed from the store by replaying
the search (`curve_cells`). A rerun of the same command skips finished runs; a crash resumes where the store
stands, each interrupted run from its checkpoint. A report (the matched-compression table) calls
`curve_cells` with the same `CurveSettings` to read the cells.

Rounds: each round trains the next probe of every unfinished cell, the remaining seeds of every cell that
landed, and (with `with_dense`) the dense reference of every seed, through `run_sweep` (in this process or
through an executor: local worker processes, Ray, submitit); cells are independent, so a round's runs can
train in parallel."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from prunebench import harness
from prunebench.environment import pick_device
from prunebench.knob import CompressionKnob
from prunebench.pruner import make_hparams
from prunebench.registry import get_method, get_task
from prunebench.request import RunRequest
from prunebench.running.executors import Executor
from prunebench.running.jobs import auto_jobs
from prunebench.running.sweep import Outcome, PlannedRun, SweepPlan, run_sweep
from prunebench.store import ResultStore

#: Cell statuses: still searching (a probe to train), landed within tolerance, beyond the knob's limit,
#: or out of probes.
STATUSES = ("searching", "reached", "unreached", "exhausted")
#: Largest step of the one-sided search: a factor of 10 on a log knob, a quarter of a linear knob's range.
MAX_LOG_STEP = math.log(10.0)
#: Assumed d log(compression) / d position before two probes give a secant: 1 (compression proportional to
#: the knob) on a log axis, 0.5 per unit of a linear (log-alpha) axis.
PRIOR_SLOPE = {True: 1.0, False: 0.5}
#: An interpolated probe keeps at least this share of the bracket from either end.
BRACKET_GUARD = 0.2


@dataclass(frozen=True)
class CurveSettings:
    """What a curve is: task, methods, target compressions, seeds (the search runs on the first), the
    tolerance (relative: 0.1 is +-10%), the probe limit, and what every run shares (iterations, eval_every,
    budget, protocol overrides, fixed hyperparameter overrides per method)."""

    task: str
    methods: tuple[str, ...]
    targets: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    tolerance: float = 0.10
    max_probes: int = 6
    iterations: int | None = None
    eval_every: int | None = None
    budget: str = "equal"
    protocol: tuple[tuple[str, Any], ...] = ()
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a curve needs at least one seed")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if self.max_probes < 1:
            raise ValueError(f"max_probes must be >= 1, got {self.max_probes}")
        if any(not t > 1 for t in self.targets) or not self.targets:
            raise ValueError(f"targets must be compressions > 1, got {self.targets}")
        for method in self.methods:
            if get_method(method).knob is None:
                raise ValueError(f"{method} declares no compression knob (Pruner.knob); it has no curve")

    def request(self, method: str, seed: int, overrides: Mapping[str, Any]) -> RunRequest:
        hparams = {**dict(self.hparams.get(method, {})), **overrides}
        return RunRequest(self.task, method, seed, hparams, self.iterations, self.eval_every, self.budget,
                          self.protocol)


@dataclass(frozen=True)
class Probe:
    value: float           # the knob value
    run_id: str
    compression: float     # of the finished run's deployed network


@dataclass(frozen=True)
class Decision:
    """The search's next move: a value to probe (status "searching"), or the end (the chosen probe's index)."""

    status: str
    value: float | None = None
    chosen: int | None = None
    note: str = ""


def within(compression: float, target: float, tolerance: float) -> bool:
    return abs(compression / target - 1) <= tolerance


def decide(knob: CompressionKnob, start: float, probes: Sequence[tuple[float, float]], target: float,
           tolerance: float, max_probes: int) -> Decision:
    """The next knob value to probe, given the finished probes as (knob value, compression) in the order
    they were made; or the end of the search. Pure: the same probes give the same decision."""
    if not probes:
        first = knob.at_target(target) if knob.sparsity else knob.value_at(knob.position(start))
        return Decision("searching", first)
    goal = math.log(target)
    sign = 1.0 if knob.raises else -1.0
    # u: position on the knob's axis, oriented so that compression rises with u; y: log compression.
    points = [(sign * knob.position(v), math.log(c)) for v, c in probes]
    landed = [i for i, (_, c) in enumerate(probes) if within(c, target, tolerance)]
    if landed:
        return Decision("reached", chosen=min(landed, key=lambda i: abs(points[i][1] - goal)))
    best = min(range(len(points)), key=lambda i: abs(points[i][1] - goal))
    if len(probes) >= max_probes:
        return Decision("exhausted", chosen=best, note=f"closest {probes[best][1]:.1f}x at {knob.label}="
                        f"{probes[best][0]:g} after {len(probes)} probes")
    below = [p for p in points if p[1] < goal]
    above = [p for p in points if p[1] > goal]
    if below and above:
        lo = max(below, key=lambda p: p[0])
        higher = [p for p in above if p[0] > lo[0]]
        if not higher:
            return Decision("exhausted", chosen=best, note=f"compression does not move with {knob.hparam} as "
                            f"declared ({knob.direction} it); closest {probes[best][1]:.1f}x")
        hi = min(higher, key=lambda p: p[0])
        u = lo[0] + (goal - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1])
        guard = BRACKET_GUARD * (hi[0] - lo[0])
        u = min(max(u, lo[0] + guard), hi[0] - guard)
    else:
        u = _extrapolate(knob, points, goal, sign)
    value = knob.value_at(sign * u)
    if any(value == v for v, _ in probes):
        return _stuck(knob, probes, target, best, bool(below and above))
    return Decision("searching", value)


def _extrapolate(knob: CompressionKnob, points: list[tuple[float, float]], goal: float, sign: float) -> float:
    """One-sided: from the outermost probe on the target's side, along the secant of the outermost two (one
    probe: the prior slope), at most MAX_LOG_STEP (a quarter of a linear knob's range); where compression
    did not move between them, straight to the knob's limit."""
    rising = goal > max(y for _, y in points)
    ordered = sorted(points, key=lambda p: p[0], reverse=rising)
    (u0, y0), rest = ordered[0], ordered[1:]
    ends = (sign * knob.position(knob.low), sign * knob.position(knob.high))
    limit = max(ends) if rising else min(ends)
    slope = PRIOR_SLOPE[knob.logarithmic]
    if rest:
        u1, y1 = rest[0]
        slope = (y0 - y1) / (u0 - u1) if u0 != u1 else 0.0
        if slope <= 0:
            return limit
    longest = MAX_LOG_STEP if knob.logarithmic else (knob.high - knob.low) / 4
    return u0 + max(-longest, min(longest, (goal - y0) / slope))


def _stuck(knob: CompressionKnob, probes: Sequence[tuple[float, float]], target: float, best: int,
           bracketed: bool) -> Decision:
    """No new value to try: the knob's limit is probed (unreached), or the bracket is narrower than the
    knob's rounding (exhausted: compression jumps across the target)."""
    if bracketed:
        return Decision("exhausted", chosen=best, note=f"compression jumps across {target:g}x between "
                        f"neighbouring {knob.hparam} values; closest {probes[best][1]:.1f}x")
    short = all(c < target for _, c in probes)
    sign = 1.0 if knob.raises else -1.0  # among equal compressions, the probe at the limit
    extreme = (max if short else min)(range(len(probes)),
                                      key=lambda i: (probes[i][1], sign * knob.position(probes[i][0])))
    value, compression = probes[extreme]
    return Decision("unreached", chosen=extreme, note=f"unreached: at {'most' if short else 'least'} "
                    f"{compression:.1f}x at the knob's limit ({knob.label}={value:g})")


@dataclass
class CurveCell:
    """One method at one target: the search's probes (seed 0 runs), its status and chosen value, the runs of
    the remaining seeds at that value, and the runs still to train (`pending`)."""

    method: str
    target: float
    knob: CompressionKnob
    status: str
    probes: list[Probe]
    chosen: Probe | None = None
    note: str = ""
    seed_runs: dict[int, str] = field(default_factory=dict)
    pending: list[RunRequest] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.pending

    def record(self) -> dict[str, Any]:
        """The cell as a flat record (for the matched-compression table and JSON output)."""
        return {"method": self.method, "target": self.target, "knob": self.knob.hparam,
                "knob_scale": self.knob.scale, "knob_value": self.chosen.value if self.chosen else None,
                "compression": self.chosen.compression if self.chosen else None, "status": self.status,
                "note": self.note, "probes": len(self.probes), "probe_runs": [p.run_id for p in self.probes],
                "seed_runs": {str(k): v for k, v in self.seed_runs.items()}}


def curve_cell(store: ResultStore, settings: CurveSettings, method: str, target: float) -> CurveCell:
    """The cell's state, replayed from the store: the search's decisions on the compressions of its finished
    probes, up to the first probe not finished (pending) or the end; then the remaining seeds' runs."""
    cls = get_method(method)
    knob = cls.knob
    if knob is None:
        raise ValueError(f"{method} declares no compression knob")
    base = make_hparams(cls, get_task(settings.task), dict(settings.hparams.get(method, {})))
    search_seed, *others = settings.seeds
    probes: list[Probe] = []
    while True:
        decision = decide(knob, knob.start(base), [(p.value, p.compression) for p in probes], target,
                          settings.tolerance, settings.max_probes)
        if decision.status != "searching":
            break
        request = settings.request(method, search_seed, knob.overrides(base, decision.value))
        compression = store.final_compression(request.run_id)
        if compression is None:
            return CurveCell(method, target, knob, "searching", probes, pending=[request])
        probes.append(Probe(decision.value, request.run_id, compression))
    chosen = probes[decision.chosen] if decision.chosen is not None else None
    cell = CurveCell(method, target, knob, decision.status, probes, chosen, decision.note)
    if decision.status == "reached" and chosen is not None:
        cell.seed_runs[search_seed] = chosen.run_id
        for seed in others:
            request = settings.request(method, seed, knob.overrides(base, chosen.value))
            cell.seed_runs[seed] = request.run_id
            if store.status(request.run_id) != "finished":
                cell.pending.append(request)
    return cell


def curve_cells(store: ResultStore, settings: CurveSettings) -> list[CurveCell]:
    """Every (method, target) cell of the curve, as the store stands."""
    return [curve_cell(store, settings, m, t) for m in settings.methods for t in settings.targets]


@dataclass
class CurveReport:
    cells: list[CurveCell]
    rounds: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def trained(self) -> int:
        """Runs trained by this call (finished, failed or interrupted; not the ones skipped)."""
        return sum(o.status != "skipped" for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _planned(store: ResultStore, request: RunRequest, setting: str) -> PlannedRun:
    return PlannedRun(request.resolve(), setting, store.status(request.run_id), request)


def _round(store: ResultStore, settings: CurveSettings, cells: list[CurveCell], with_dense: bool,
           tried: set[str]) -> list[PlannedRun]:
    """The runs of the next round: the dense reference of each seed, each cell's pending runs; none twice,
    and none this call already tried (a run that failed waits for the next call)."""
    runs: dict[str, PlannedRun] = {}
    if with_dense:
        for seed in settings.seeds:
            request = settings.request("dense", seed, {})
            if store.status(request.run_id) != "finished":
                runs[request.run_id] = _planned(store, request, "dense reference")
    for cell in cells:
        for request in cell.pending:
            if request.run_id not in runs:
                value = dict(request.hparams).get(cell.knob.hparam)
                what = "probe" if cell.status == "searching" else "seed"
                runs[request.run_id] = _planned(store, request, f"{cell.target:g}x {what} "
                                                f"{cell.knob.hparam}={_short(value)}")
    return [r for rid, r in runs.items() if rid not in tried]


def _short(value: Any) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def run_curve(settings: CurveSettings, db: Path | str, data_dir: Path | str, *, device: str | None = None,
              jobs: int = 1, executor: Executor | None = None, console: Console | None = None,
              with_dense: bool = True, checkpoints: Path | str | None = None,
              checkpoint_seconds: float | None = harness.CHECKPOINT_SECONDS,
              on_outcome: Callable[[Outcome], None] | None = None,
              allow_unverified_data: bool = False) -> CurveReport:
    """Search and train every cell of `settings` into the store at `db`, round after round, until every cell
    is reached (with its seeds trained), unreached or exhausted; finished runs are never trained again.
    Ctrl-C stops it (`interrupted`); the same call later continues. A run that fails is not retried in this
    call: its cell stays "searching" (see the report's `failed`). `jobs` 0 is `--jobs auto`, chosen per round
    (`prunebench.running.jobs`)."""
    console = console or Console(stderr=True)
    report = CurveReport([])
    tried: set[str] = set()
    while True:
        store = ResultStore(db)
        try:
            report.cells = curve_cells(store, settings)
            runs = _round(store, settings, report.cells, with_dense, tried)
        finally:
            store.close()
        if not runs or report.interrupted:
            return report
        tried.update(r.request.run_id for r in runs)
        report.rounds += 1
        probes = sum(" probe " in r.setting for r in runs)
        console.print(f"[bold]round {report.rounds}[/]: {probes} probe(s), {len(runs) - probes} other run(s)")
        outcome_hook = report.outcomes.append if on_outcome is None else (
            lambda o: (report.outcomes.append(o), on_outcome(o)))
        round_jobs = jobs
        if jobs == 0:  # --jobs auto, for this round's runs
            chosen = auto_jobs(len(runs), pick_device(device).type)
            console.print(chosen.describe())
            round_jobs = chosen.jobs
        sweep = run_sweep(SweepPlan(runs), db, data_dir, device=device, jobs=round_jobs, console=console,
                          on_outcome=outcome_hook, allow_unverified_data=allow_unverified_data,
                          executor=executor, checkpoints=checkpoints, checkpoint_seconds=checkpoint_seconds)
        report.interrupted = sweep.interrupted


def summary_table(report: CurveReport, task: str) -> Table:
    """One row per cell: status, knob value, compression reached, probes, seeds trained."""
    table = Table(title=f"matched compression on {task}: {report.rounds} round(s), {report.trained} run(s) "
                  f"trained")
    for col in ("method", "target", "status", "knob", "value", "compression", "probes", "seeds", "note"):
        table.add_column(col, justify="right" if col in ("target", "value", "compression", "probes") else "left")
    for cell in report.cells:
        chosen = cell.chosen
        colour = {"reached": "green", "unreached": "yellow", "exhausted": "red"}.get(cell.status, "white")
        table.add_row(cell.method, f"{cell.target:g}x", f"[{colour}]{cell.status}[/]", cell.knob.label,
                      f"{chosen.value:g}" if chosen else "-", f"{chosen.compression:.1f}x" if chosen else "-",
                      str(len(cell.probes)), f"{len(cell.seed_runs) - len(cell.pending)}/{len(cell.seed_runs)}"
                      if cell.seed_runs else "-", cell.note)
    return table

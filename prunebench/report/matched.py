"""The matched-compression table: every method's test accuracy at the same target compressions, read from the
cells of a `prunebench curve` (`prunebench matched --task T ...`, the same settings as the curve's).

Rows are methods, columns the targets. A cell whose search *reached* the target (a knob value whose deployed
network lands within the tolerance on the search seed, `prunebench.running.curve`) shows, over the finished runs
of its seeds at that value: the test accuracy of the deployed network (%, mean +- the half-width of the 95%
confidence interval of the mean, Student t; no interval for one seed), the compression the runs actually reached
(mean), and the accuracy loss against `dense` of the same seed and protocol (pp, positive = worse; as in the
leaderboard, `leaderboard.run_table`). An *unreached* or *exhausted* cell shows its search's note (e.g.
"unreached: at most 31.0x at the knob's limit (lam=0.1)"); a cell still *searching* says so.

Per column, the reached cell with the highest mean accuracy is the best (bold); every other reached cell is
compared with it by Welch's t-test on the per-seed accuracies (two-sided, p = 0.05, `stats.welch`): "tied"
(not significantly worse, marked "≈"), "worse", or "n/a" when either side has fewer than 2 seeds. The CSV's
`significant_vs_best` holds "best", "no" (not significantly worse), "yes" (significantly worse), "n/a", or ""
(no accuracy: the cell did not reach its target).

Every row carries the command that reruns its runs (`RunRequest.command`: a `prunebench sweep` of its seeds at
the chosen knob value, dense references included); the page heads with the `prunebench curve` command that
searches again and the `prunebench matched` command that writes the table. The settings are also written as
`<task>-matched.json`, so the site can rebuild the table from the store (`read_settings`).

The site's first page (`report.site`) and the DT-paper report's section "DT against the others at matched
compression" (`suites.reproduce`) rebuild the tables from the store recorded in the JSON (`read_matched`)."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.pruner import make_hparams
from prunebench.registry import get_method, get_task
from prunebench.report import stats
from prunebench.report.leaderboard import run_table, shown_name
from prunebench.request import CLI_PROTOCOL_FLAGS, format_seeds
from prunebench.running.curve import CurveCell, CurveSettings, curve_cells, within
from prunebench.store import ResultStore

#: The significance level of the comparison with the best of a column (Welch's t-test, two-sided).
ALPHA = 0.05
#: Mark of a cell not significantly worse than the best of its column.
TIED_MARK = "≈"
CSV_COLUMNS = ("task", "method", "target", "status", "note", "seeds", "seed_list", "compression_mean",
               "accuracy_mean", "accuracy_ci95", "loss_mean", "loss_ci95", "train_seconds_mean",
               "on_target", "significant_vs_best", "p_vs_best", "knob", "knob_value", "probe_runs", "probe_run_ids",
               "run_ids", "command")
#: `significant_vs_best` of each comparison outcome.
SIGNIFICANT = {"best": "best", "tied": "no", "worse": "yes", "n/a": "n/a", "off target": "off target", "": ""}


@dataclass
class MatchedCell:
    """One method at one target: the search's outcome and the finished seed runs at the chosen value (accuracy
    and loss in %/pp, compression, training seconds, one entry per seed in `seeds` order)."""

    method: str
    target: float
    status: str
    note: str
    knob: str
    knob_value: float | None
    probe_run_ids: list[str]
    seeds: list[int] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    compression: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    planned_seeds: int = 0
    command: str = ""
    versus_best: str = ""        # "best", "tied", "worse", "n/a", "off target"; "" without accuracy
    p_vs_best: float = math.nan
    tolerance: float = 0.10

    @property
    def on_target(self) -> bool:
        """The seeds' mean compression is within the search's tolerance of the target: only such cells are
        compared (a knob value found on seed 0 may land elsewhere on other seeds)."""
        return self.has_accuracy and within(stats.mean(self.compression), self.target, self.tolerance)

    @property
    def has_accuracy(self) -> bool:
        return self.status == "reached" and bool(self.accuracy)

    @property
    def accuracy_mean(self) -> float:
        return stats.mean(self.accuracy)

    @property
    def accuracy_ci95(self) -> float:
        return stats.ci95_halfwidth(self.accuracy)

    @property
    def loss_mean(self) -> float:
        return stats.mean(self.loss)

    def record(self, task: str) -> dict[str, Any]:
        """The cell as a CSV row (`CSV_COLUMNS`)."""
        nan = math.nan
        return {"task": task, "method": self.method, "target": self.target, "status": self.status,
                "note": self.note, "seeds": len(self.seeds), "seed_list": format_seeds(self.seeds) if self.seeds
                else "", "compression_mean": stats.mean(self.compression),
                "accuracy_mean": self.accuracy_mean if self.has_accuracy else nan,
                "accuracy_ci95": self.accuracy_ci95 if self.has_accuracy else nan,
                "loss_mean": self.loss_mean if self.has_accuracy else nan,
                "loss_ci95": stats.ci95_halfwidth(self.loss) if self.has_accuracy else nan,
                "train_seconds_mean": stats.mean(self.train_seconds), "on_target": self.on_target,
                "significant_vs_best": SIGNIFICANT[self.versus_best], "p_vs_best": self.p_vs_best,
                "knob": self.knob, "knob_value": self.knob_value if self.knob_value is not None else nan,
                "probe_runs": len(self.probe_run_ids), "probe_run_ids": " ".join(self.probe_run_ids),
                "run_ids": " ".join(self.run_ids), "command": self.command}


def mark_significance(cells: Sequence[MatchedCell], alpha: float = ALPHA) -> None:
    """Per target: the reached cell of highest mean accuracy is "best"; each other reached cell is "tied" (Welch's
    two-sided p >= alpha against the best), "worse" (p < alpha), or "n/a" (fewer than 2 seeds on either side). A
    cell whose seeds' mean compression is off target (`MatchedCell.on_target`) is "off target", in no comparison."""
    for target in dict.fromkeys(c.target for c in cells):
        for c in cells:
            if c.target == target and c.has_accuracy:
                c.versus_best, c.p_vs_best = ("" if c.on_target else "off target"), math.nan
        column = [c for c in cells if c.target == target and c.on_target]
        if not column:
            continue
        best = max(column, key=lambda c: c.accuracy_mean)
        best.versus_best = "best"
        for c in column:
            if c is best:
                continue
            _, _, p = stats.welch(best.accuracy, c.accuracy)
            c.p_vs_best = p
            c.versus_best = "n/a" if math.isnan(p) else ("worse" if p < alpha else "tied")


def _cell(curve: CurveCell, settings: CurveSettings, runs: pd.DataFrame, db_label: str | None) -> MatchedCell:
    """A curve cell with the numbers of its finished seed runs (rows of `run_table`, indexed by run id)."""
    chosen = curve.chosen
    cell = MatchedCell(curve.method, curve.target, curve.status, curve.note, curve.knob.label,
                       chosen.value if chosen else None, [p.run_id for p in curve.probes],
                       planned_seeds=len(settings.seeds), tolerance=settings.tolerance)
    if curve.status != "reached" or chosen is None:
        return cell
    base = make_hparams(get_method(curve.method), get_task(settings.task),
                        dict(settings.hparams.get(curve.method, {})))
    request = settings.request(curve.method, settings.seeds[0], curve.knob.overrides(base, chosen.value))
    cell.command = request.command(*(["--db", db_label] if db_label else []), seeds=settings.seeds)
    for seed, run_id in sorted(curve.seed_runs.items()):
        if run_id not in runs.index:
            continue  # not finished yet
        row = runs.loc[run_id]
        cell.seeds.append(seed)
        cell.run_ids.append(run_id)
        cell.accuracy.append(float(row["accuracy"]))
        cell.compression.append(float(row["compression"]))
        cell.loss.append(float(row["accuracy_loss"]))
        cell.train_seconds.append(float(row["train_seconds"]))
    return cell


@dataclass(frozen=True)
class SearchCost:
    """What the curve took, from the store: probe runs counted per cell (a probe shared by cells, such as the
    common start value, counts in each) and as distinct runs; the seed runs beyond the probes; the dense
    references; the training wall-clock of all these distinct finished runs (each run one thread here)."""

    cells: int
    probes_per_cell: float
    distinct_probes: int
    seed_runs: int
    dense_runs: int
    train_hours: float

    def describe(self) -> str:
        return (f"{self.cells} cells took {self.probes_per_cell:.2f} probe runs each on average "
                f"({self.distinct_probes} distinct probe runs: cells share probes such as the common start value), "
                f"{self.seed_runs} further seed runs and {self.dense_runs} dense references; the training "
                f"wall-clock of these runs adds up to {self.train_hours:.1f} h.")


def search_cost(curve: Sequence[CurveCell], settings: CurveSettings, runs: pd.DataFrame) -> SearchCost:
    """`SearchCost` of a curve's cells over the finished runs (`run_table` rows indexed by run id)."""
    probes = {p.run_id for c in curve for p in c.probes}
    seeds = {rid for c in curve for rid in c.seed_runs.values()} - probes
    dense = {settings.request("dense", seed, {}).run_id for seed in settings.seeds}
    finished = [rid for rid in probes | seeds | dense if rid in runs.index]
    return SearchCost(len(curve), stats.mean([len(c.probes) for c in curve]) if curve else math.nan, len(probes),
                      len(seeds & set(runs.index)), len(dense & set(runs.index)),
                      float(runs.loc[finished, "train_seconds"].sum()) / 3600 if finished else 0.0)


@dataclass
class MatchedTable:
    """The matched-compression table of one curve's settings, as the store stands."""

    settings: CurveSettings
    cells: list[MatchedCell]
    db: str
    command: str = ""
    cost: SearchCost | None = None

    @property
    def task(self) -> str:
        return self.settings.task

    @property
    def has_results(self) -> bool:
        """True when at least one cell has accuracy (a reached target with a finished seed run)."""
        return any(c.has_accuracy for c in self.cells)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.record(self.task) for c in self.cells], columns=list(CSV_COLUMNS))

    def cell(self, method: str, target: float) -> MatchedCell:
        return next(c for c in self.cells if c.method == method and c.target == target)

    def grid(self) -> list[dict[str, str]]:
        """Display rows: {"method": ..., "<target>x": cell text} per method, in the settings' order."""
        rows = []
        for method in self.settings.methods:
            row = {"method": shown_name(method)}
            for target in self.settings.targets:
                row[f"{target:g}x"] = cell_text(self.cell(method, target))
            rows.append(row)
        return rows

    def search_command(self) -> str:
        """The `prunebench curve` command that searches (and trains) every cell again, skipping finished runs."""
        try:
            return shlex.join(["prunebench", "curve", *settings_args(self.settings), "--db", self.db])
        except ValueError as exc:
            return f"({exc})"

    def to_markdown(self) -> str:
        rows = self.grid()
        headers = list(rows[0]) if rows else ["method"]
        lines = [f"# Accuracy at matched compression: {self.task}", "",
                 "Regenerate this table (from the store, no training) with:", "", "```", self.command, "```", "",
                 "Search and train every cell again (finished runs are skipped) with:", "", "```",
                 self.search_command(), "```", "",
                 f"Generated from the result store `{self.db}`. Each cell: test accuracy of the deployed network "
                 "(%, mean ± half-width of the 95% confidence interval of the mean over seeds, Student t); the "
                 "compression the seeds' runs reached (mean, conv + fc weights); the accuracy loss against `dense` "
                 "of the same seeds and protocol (pp, positive = worse); the number of seeds. The knob value of each "
                 f"cell was found on seed {self.settings.seeds[0]} from compression alone (within "
                 f"±{self.settings.tolerance:.0%} of the target), never from accuracy.", "",
                 "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(d[h].replace("|", "\\|") for h in headers) + " |" for d in rows]
        lines += ["", f"**Bold**: the highest mean accuracy of the column. {TIED_MARK}: not significantly worse than "
                  f"it (Welch's t-test on the seeds' accuracies, two-sided, p = {ALPHA:g}); no mark: significantly "
                  "worse; n/a: fewer than 2 seeds on either side, no test; *off target*: the seeds' mean compression "
                  f"is outside ±{self.settings.tolerance:.0%} of the target (the value found on seed "
                  f"{self.settings.seeds[0]} landed elsewhere on other seeds), so the cell is in no comparison. "
                  "Unreached: the knob's limit falls short "
                  "of the target; exhausted: no probe landed within the tolerance in the probes allowed.", "",
                  *([f"Search cost: {self.cost.describe()}", ""] if self.cost else []),
                  "## Rerun a cell", "", "Each command reruns the cell's seeds at its knob value (and their `dense` "
                  "references); finished runs are skipped.", ""]
        for c in self.cells:
            if c.command:
                lines.append(f"- {c.method} at {c.target:g}x ({c.knob}={c.knob_value:g}, {len(c.probe_run_ids)} "
                             f"probe run{'' if len(c.probe_run_ids) == 1 else 's'}): `{c.command}`")
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: Path | str) -> list[Path]:
        """`<out_dir>/<task>-matched.md`, `.csv` and `.json` (the settings); the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, csv, settings = (out / f"{self.task}-matched.{ext}" for ext in ("md", "csv", "json"))
        md.write_text(self.to_markdown())
        self.frame().to_csv(csv, index=False, float_format="%.6g")
        settings.write_text(json.dumps({**settings_record(self.settings), "db": self.db}, indent=1) + "\n")
        return [md, csv, settings]


def accuracy_text(c: MatchedCell) -> str:
    """'97.87 ± 0.29': the cell's mean test accuracy (%) and its 95% CI half-width (none with one seed)."""
    ci = c.accuracy_ci95
    return f"{c.accuracy_mean:.2f}" + (f" ± {ci:.2f}" if math.isfinite(ci) else "")


def cell_text(c: MatchedCell) -> str:
    """'**98.10 ± 0.25** %, 49.8x, +0.12 pp (3 seeds)'; the note of a cell without accuracy."""
    if c.status == "searching":
        return f"searching ({len(c.probe_run_ids)} probes so far)"
    if c.status != "reached":
        return f"{c.status}: {c.note.removeprefix('unreached: ')}" if c.note else c.status
    if not c.has_accuracy:
        return "reached; no seed run finished"
    accuracy = accuracy_text(c)
    accuracy = f"**{accuracy}**" if c.versus_best == "best" else accuracy
    mark = {"tied": f" {TIED_MARK}", "n/a": " (n/a)", "off target": " (off target)"}.get(c.versus_best, "")
    loss = f"{c.loss_mean:+.2f} pp" if math.isfinite(c.loss_mean) else "no dense run"
    seeds = f"{len(c.seeds)}/{c.planned_seeds}" if len(c.seeds) < c.planned_seeds else str(len(c.seeds))
    return f"{accuracy} %{mark}, {stats.mean(c.compression):.1f}x, {loss} ({seeds} seeds)"


def settings_args(settings: CurveSettings) -> list[str]:
    """The options of `prunebench curve` / `prunebench matched` that give these settings (fixed per-method
    hyperparameter overrides, and protocol fields without a flag, have none there: ValueError)."""
    if settings.hparams or any(name not in CLI_PROTOCOL_FLAGS or name == "iterations"
                               for name, _ in settings.protocol):
        raise ValueError("curve settings with fixed hyperparameter or protocol overrides have no command line")
    args = ["--task", settings.task, "--methods", ",".join(settings.methods),
            "--targets", ",".join(f"{t:g}" for t in settings.targets), "--seeds", format_seeds(settings.seeds)]
    if settings.tolerance != 0.10:
        args += ["--tolerance", f"{settings.tolerance:g}"]
    if settings.max_probes != 6:
        args += ["--max-probes", str(settings.max_probes)]
    args += ["--iterations", str(settings.iterations)] if settings.iterations is not None else []
    args += ["--eval-every", str(settings.eval_every)] if settings.eval_every is not None else []
    args += ["--budget", settings.budget] if settings.budget != "equal" else []
    for name, value in settings.protocol:
        args += [CLI_PROTOCOL_FLAGS[name], str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def settings_record(settings: CurveSettings) -> dict[str, Any]:
    """The settings as JSON (`read_settings` reads them back)."""
    return {"task": settings.task, "methods": list(settings.methods), "targets": list(settings.targets),
            "seeds": list(settings.seeds), "tolerance": settings.tolerance, "max_probes": settings.max_probes,
            "iterations": settings.iterations, "eval_every": settings.eval_every, "budget": settings.budget,
            "protocol": [list(p) for p in settings.protocol],
            "hparams": {m: dict(h) for m, h in settings.hparams.items()}}


def read_matched(path: Path | str, default_db: Path | str) -> tuple[CurveSettings, Path]:
    """The settings written beside a matched table (`<task>-matched.json`) and the store to rebuild it from: the
    one the table was written from (recorded as given, e.g. `leaderboards/foundation/matched.sqlite`) where that
    file exists, else `default_db`."""
    recorded = json.loads(Path(path).read_text()).get("db")
    db = Path(recorded) if recorded and Path(recorded).is_file() else Path(default_db)
    return read_settings(path), db


def read_settings(path: Path | str) -> CurveSettings:
    """The settings written beside a matched table (`<task>-matched.json`)."""
    data = json.loads(Path(path).read_text())
    return CurveSettings(data["task"], tuple(data["methods"]), tuple(float(t) for t in data["targets"]),
                         tuple(int(s) for s in data["seeds"]), float(data["tolerance"]), int(data["max_probes"]),
                         data.get("iterations"), data.get("eval_every"), data.get("budget", "equal"),
                         tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in data.get("protocol", [])),
                         {m: {k: tuple(v) if isinstance(v, list) else v for k, v in h.items()}
                          for m, h in data.get("hparams", {}).items()})


def matched_command(settings: CurveSettings, db_label: str, out: Path | str) -> str:
    """The `prunebench matched` command that writes this table again."""
    return shlex.join(["prunebench", "matched", *settings_args(settings), "--db", db_label, "--out", str(out)])


def build_matched(db: Path | str, settings: CurveSettings, db_label: str | None = None,
                  command: str | None = None) -> MatchedTable:
    """The table of `settings`' cells as the store at `db` stands (the search replayed by `curve_cells`; the
    seed runs' accuracy, loss against dense and timing from `leaderboard.run_table`)."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no result store at {db}")
    label = db_label if db_label is not None else str(db)
    store = ResultStore(db)
    try:
        curve = curve_cells(store, settings)
    finally:
        store.close()
    runs = run_table(db, settings.task, max_loss=None, thresholds=()).set_index("run_id", drop=False)
    cells = [_cell(c, settings, runs, label) for c in curve]
    mark_significance(cells)
    try:
        command = command or matched_command(settings, label, "leaderboards")
    except ValueError:
        command = "(settings with fixed overrides: build_matched from Python)"
    return MatchedTable(settings, cells, label, command, search_cost(curve, settings, runs))

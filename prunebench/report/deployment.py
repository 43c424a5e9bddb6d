"""The deployment table of a task: what compression buys each method's network (`prunebench export --table`).

One row per method: its finished run of seed 0 at the task's calibrated defaults (setting "default" of
`prunebench.setting`: no hyperparameter or protocol field differs from what `prunebench run --method M --task
T` uses today) under budget "equal", the row the leaderboard's default setting starts from. Each is
exported (`prunebench.report.export.export_run`: its kept model, or a rerun from its stored identity, whose
accuracy and compression are checked against the stored ones), loaded back and measured
(`prunebench.sparse`: bytes of the dense and the compressed file, latency of the dense and the compressed
network at batch 1 and 100 on one CPU thread) beside the theoretical FLOPs reduction. The store is only
read. A run whose model is not kept is rerun, or, with `rerun=False`, listed as not measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunebench.deploy import model_path, models_dir
from prunebench.observers import Observer
from prunebench.report.export import ExportError, ExportResult, export_run, flops_reductions
from prunebench.report.leaderboard import shown_name
from prunebench.request import RunSpec
from prunebench.setting import rerun_command, setting_items, setting_string
from prunebench.sparse import LATENCY_ROUNDS, SAMPLE_SECONDS
from prunebench.store import read_only


def pick_runs(db: Path, task: str) -> list[dict[str, Any]]:
    """The finished seed-0, budget-"equal", default-setting run of each method on `task` (stored row and
    final accuracy / compression), one per method, by compression (highest first). Read-only."""
    db = Path(db)
    if not db.exists():
        raise ExportError(f"no result store at {db}")
    with read_only(db) as conn:
        rows = [dict(r) for r in conn.execute(
            "SELECT r.run_id, r.task, r.method, r.seed, r.budget, r.identity, r.protocol, f.accuracy, f.compression "
            "FROM runs r JOIN final f USING (run_id) WHERE r.task = ? AND r.status = 'finished' AND r.seed = 0 "
            "AND r.budget = 'equal' ORDER BY r.method, r.run_id", (task,))]
    picked: dict[str, dict[str, Any]] = {}
    for row in rows:
        if setting_string(*setting_items(task, row["method"], json.loads(row["identity"]))) == "default":
            picked.setdefault(row["method"], row)
    return sorted(picked.values(), key=lambda r: -float(r["compression"]))


@dataclass
class DeploymentRow:
    method: str
    run_id: str
    accuracy: float                       #: stored
    compression: float                    #: stored
    result: ExportResult | None = None
    note: str | None = None               #: why the row is not measured
    eval_every: int | None = None         #: the stored run's (not part of its identity)

    def command(self, task: str, db: Path) -> str:
        """The `prunebench sweep` command that makes this run again (its identity, its evaluation interval)."""
        return rerun_command(task, self.method, [0], "equal", {}, {}, db=str(db), eval_every=self.eval_every)


def machine() -> str:
    """The CPU the latency was measured on, as one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count() or 0} CPU cores, {platform.platform()}, torch {torch.__version__}"


def build_rows(task: str, db: Path, data_dir: Path, models: Path | None = None, rerun: bool = True,
               observer: Observer | None = None, log: Callable[[str], None] = print) -> list[DeploymentRow]:
    """Export and measure each picked run (`pick_runs`); a run not measured gets a note."""
    directory = Path(models) if models is not None else models_dir(Path(db))
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunebench-deployment-") as tmp:
        for picked in pick_runs(db, task):
            row = DeploymentRow(picked["method"], picked["run_id"], float(picked["accuracy"]),
                                float(picked["compression"]),
                                eval_every=json.loads(picked.get("protocol") or "{}").get("eval_every"))
            rows.append(row)
            if not rerun and not model_path(directory, row.run_id).exists():
                row.note = "not measured: its model is not kept and reruns were not asked for (--no-rerun)"
                log(f"{row.method} ({row.run_id}): {row.note}")
                continue

            def before(spec: RunSpec, method: str = row.method, run_id: str = row.run_id) -> None:
                log(f"{method} ({run_id}): model not kept; running it again from its stored identity "
                    f"({spec.protocol.iterations:,} iterations)")

            try:
                row.result = export_run(row.run_id, db, "safetensors", Path(tmp) / f"{row.run_id}.safetensors",
                                        data_dir, directory, before_rerun=before, observer=observer)
            except ExportError as exc:
                row.note = f"not measured: {exc}"
            log(f"{row.method} ({row.run_id}): {row.note or 'measured'}")
    return rows


def _us(seconds: float) -> str:
    return f"{1e6 * seconds:,.0f}" if seconds * 1e6 >= 100 else f"{1e6 * seconds:,.1f}"


def _check_cell(row: DeploymentRow) -> str:
    result = row.result
    assert result is not None
    model = result.model
    origin = "rerun" if model.rerun is not None else "kept by its run"
    same = "= stored" if model.reproduced else (
        f"DIFFERS ({100 * model.saved.final['accuracy']:.2f}%, {model.saved.final['compression']:.2f}x)")
    return f"{origin} {same}; file {'=' if result.faithful else 'DIFFERS'}"


def _where(environment: dict[str, Any] | None) -> str:
    if not environment:
        return "environment not recorded"
    commit = str(environment.get("git_commit") or "?")
    short = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
    return f"{environment.get('device', '?')}, torch {environment.get('torch', '?')}, commit {short}"


def _numbers(final: dict[str, Any]) -> str:
    return f"{100 * final['accuracy']:.2f}% / {final['compression']:.2f}x / {final['weights_nonzero']:,} non-zero"


def reproduction_lines(rows: list[DeploymentRow]) -> list[str]:
    """Which measured networks reproduce their stored run, and for those that do not, where each ran."""
    same = [r for r in rows if r.result.model.reproduced]
    differing = [r for r in rows if not r.result.model.reproduced]
    lines = []
    if same:
        methods = ", ".join(shown_name(r.method) for r in same)
        lines.append(f"Exactly the stored accuracy, compression and non-zero weights: {methods} (the rerun, or the "
                     "run that kept the model).")
    if differing:
        lines += ["", "The rerun differs from the stored run (the table's accuracy and compression are the stored "
                  "run's; bytes, latencies and FLOPs are of the rerun's network):", ""]
        for row in differing:
            model = row.result.model
            stored_env = json.loads(model.run.get("environment") or "{}")
            started = model.run.get("started_at")
            when = time.strftime("%Y-%m-%d", time.gmtime(started)) if started else "?"
            lines.append(f"- {shown_name(row.method)}: stored {_numbers(model.final)} (trained {when}, "
                         f"{_where(stored_env)}); "
                         f"rerun {_numbers(model.saved.final)} ({_where(model.saved.environment)}).")
    return lines


def to_markdown(task: str, rows: list[DeploymentRow], command: str, db: Path) -> str:
    measured = [r for r in rows if r.result is not None]
    lines = [f"# Deployment: {task}", "", "Regenerate with:", "", "```", command, "```", "",
             f"What compression buys each method's deployed network on `{task}`: one finished run per method "
             f"from the store `{db}` (seed 0, the task's calibrated defaults, budget equal, the task's protocol), "
             "exported by `prunebench export` with exact zeros and measured on this machine's CPU.", "",
             "- **accuracy %, compression**: as stored (deployed network, test set; conv + fc weights / non-zero "
             "ones).",
             "- **FLOPs red.**: multiply-accumulates per example of the dense architecture / of the deployed "
             "network's non-zero weights (ideal sparse kernels); for a physically smaller network (autoprune) "
             "also / as built, in brackets. Theory, not measured.",
             "- **dense bytes**: the safetensors file of the task architecture's float32 parameters (for an "
             "unstructured method, the deployed network with its zeros). **compressed bytes**: the safetensors "
             "file actually written, each weight in the smallest of dense float32, bitmask (`np.packbits`) + "
             "float32 non-zero values, or CSR (column indices and row pointers in the smallest unsigned integer "
             "type, float32 values), per layer; biases dense (`prunebench.sparse`). Both are real file sizes, "
             "headers included. **size red.** = dense / compressed bytes.",
             "- **latency**: median wall-clock of one forward pass at batch 1 and 100 on one CPU thread, dense "
             f"and compressed network alternating in one process ({LATENCY_ROUNDS} rounds, each at least "
             f"{1000 * SAMPLE_SECONDS:g} ms of calls). "
             "dense: every layer a dense kernel of the task architecture's shape. compressed: each layer stored "
             "bitmask or CSR runs as a torch sparse CSR matrix product (Linear; a Conv2d would run as unfold + "
             "CSR product), each layer stored dense as a dense kernel; a physically smaller network runs as "
             "dense kernels of its smaller shapes. Where the machine is shared with other jobs while measuring, "
             "absolute latencies vary between regenerations more than the dense / compressed ratios, which are "
             "measured alternating.",
             "- **check**: whether the network was kept by its run (`--save-model`) or made again by rerunning "
             "the run from its stored identity, and whether that rerun gave exactly the stored accuracy, "
             "compression and non-zero weights (`= stored`); `file =`: the exported safetensors file, loaded "
             "back into the architecture, gets its network's number of correct test predictions and holds its "
             "number of non-zero weights (those of the stored run, or of the rerun where it differs).", "",
             f"Machine: {machine()}.", ""]
    if measured:
        headers = ["method", "run", "accuracy %", "compression", "FLOPs red.", "dense bytes", "compressed bytes",
                   "size red.", "storage", "batch 1 µs dense / compr.", "speed-up b1",
                   "batch 100 µs dense / compr.", "speed-up b100", "check"]
        lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        for row in rows:
            if row.result is None:
                continue
            result, cost = row.result, row.result.cost
            built, nonzero = flops_reductions(result)
            flops = f"{nonzero:.1f}x" + (f" ({built:.1f}x)" if cost.reshaped else "")
            b1, b100 = cost.latency[1], cost.latency[100]
            cells = [shown_name(row.method), f"`{row.run_id}`", f"{100 * row.accuracy:.2f}", f"{row.compression:.1f}x",
                     flops,
                     f"{cost.dense_bytes:,}", f"{cost.compressed_bytes:,}", f"{cost.size_ratio:.1f}x",
                     "smaller network, dense" if cost.reshaped else cost.describe_storage(),
                     f"{_us(b1[0])} / {_us(b1[1])}", f"{b1[0] / b1[1]:.2f}x",
                     f"{_us(b100[0])} / {_us(b100[1])}", f"{b100[0] / b100[1]:.2f}x", _check_cell(row)]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append(f"_No run of `{task}` measured._")
    missing = [r for r in rows if r.result is None]
    if missing:
        lines += ["", "Not measured:", ""]
        lines += [f"- {shown_name(r.method)} (`{r.run_id}`, {100 * r.accuracy:.2f}%, {r.compression:.1f}x): {r.note}"
                  for r in missing]
    lines += ["", "## Reproduction", ""] + reproduction_lines(measured)
    if rows:
        lines += ["", "## Rerun a row", "",
                  "The first command makes the row's run again (skipped when its identity is finished in the store); "
                  "the second exports it (rerunning it when its model is not kept beside the store).", ""]
        for row in rows:
            lines.append(f"- {row.method}: `{row.command(task, db)}`; "
                         f"`prunebench export {row.run_id} --format pt --out {row.run_id}.pt --db {db}`")
    return "\n".join(lines).rstrip() + "\n"


def write_deployment_table(task: str, db: Path, out: Path, data_dir: Path, command: str, models: Path | None = None,
                           rerun: bool = True, observer: Observer | None = None,
                           log: Callable[[str], None] = print) -> tuple[Path, list[DeploymentRow]]:
    """Build the rows and write `out` (markdown); returns its path and the rows."""
    rows = build_rows(task, db, data_dir, models, rerun, observer, log)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(task, rows, command, db))
    return out, rows

"""One writer: what a sweep worker sends back instead of writing the SQLite store itself.

A worker on another process, node or Slurm job trains with a `RecordingStore`, an in-memory stand-in
for `ResultStore` with the same methods the harness calls. When the run ends (finished, failed or
interrupted) the worker returns the `RunRecord`: the run's row, its trajectory points and its final
row. The driver alone writes it with `ResultStore.apply`, in one transaction that replaces whatever
the store held for that identity, so a record applied twice leaves one run, and a run is marked
finished only together with its final row (SQLite on a network filesystem with many writers loses
data; DESIGN.md, machines for a sweep).

A worker that dies sends nothing. What it had done survives in its checkpoint, which also carries
the record so far (`RecordingStore.snapshot`), so the retried worker continues from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

#: The columns of the store's `runs` table that a record carries.
RUN_COLUMNS = ("run_id", "task", "method", "seed", "budget", "identity", "hparams", "protocol", "status",
               "started_at", "finished_at", "environment", "error", "failed_step")


@dataclass
class RunRecord:
    """One run as the store would hold it: its `runs` row (JSON columns as JSON text), its trajectory
    points in step order and its final row (None unless finished)."""

    run: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def status(self) -> str:
        return self.run["status"]

    def summary(self) -> dict[str, Any]:
        """accuracy, compression, train_seconds and iterations of the final row (empty if none)."""
        f = self.final or {}
        return {k: f.get(k) for k in ("accuracy", "compression", "train_seconds", "iterations")} if f else {}


def _point(row: dict[str, Any]) -> dict[str, Any]:
    """A trajectory row as a worker keeps it: no run_id, no empty columns."""
    return {k: v for k, v in row.items() if k != "run_id" and v is not None}


class RecordingStore:
    """The `ResultStore` methods the harness uses, kept in memory for one worker's runs."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.points: dict[str, dict[int, dict[str, Any]]] = {}
        self.finals: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        pass

    def status(self, run_id: str) -> str | None:
        run = self.runs.get(run_id)
        return run["status"] if run else None

    def start_run(self, run_id: str, *, task: str, method: str, seed: int, budget: str,
                  identity: dict, hparams: dict, protocol: dict, environment: dict) -> None:
        self.runs[run_id] = {
            "run_id": run_id, "task": task, "method": method, "seed": seed, "budget": budget,
            "identity": json.dumps(identity), "hparams": json.dumps(hparams), "protocol": json.dumps(protocol),
            "status": "running", "started_at": time.time(), "finished_at": None,
            "environment": json.dumps(environment), "error": None, "failed_step": None}
        self.points[run_id] = {}
        self.finals.pop(run_id, None)

    def resume_run(self, run_id: str, step: int, environment: dict) -> None:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"no run {run_id} to resume")
        env = json.loads(run["environment"] or "{}")
        env.setdefault("resumed", []).append({"step": step, **environment})
        run.update(status="running", finished_at=None, error=None, failed_step=None, environment=json.dumps(env))
        self.points[run_id] = {s: p for s, p in self.points.get(run_id, {}).items() if s <= step}

    def add_point(self, run_id: str, row: dict[str, Any]) -> None:
        self.points.setdefault(run_id, {})[int(row["step"])] = dict(row)

    def finish(self, run_id: str, final: dict[str, Any]) -> None:
        self.finals[run_id] = dict(final)
        self.runs[run_id].update(status="finished", finished_at=time.time())

    def mark(self, run_id: str, status: str, error: str | None = None, failed_step: int | None = None) -> None:
        self.runs[run_id].update(status=status, finished_at=time.time(), error=error, failed_step=failed_step)

    def run_row(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return dict(run) if run else None

    def final_row(self, run_id: str) -> dict[str, Any] | None:
        final = self.finals.get(run_id)
        return {"run_id": run_id, **final} if final is not None else None

    def trajectory(self, run_id: str) -> list[dict[str, Any]]:
        return [{"run_id": run_id, **self.points[run_id][s]} for s in sorted(self.points.get(run_id, {}))]

    def record(self, run_id: str) -> RunRecord:
        """What the worker sends back for `run_id`."""
        return RunRecord(dict(self.runs[run_id]), [_point(p) for p in self.trajectory(run_id)],
                         self.finals.get(run_id))

    def restore(self, snapshot: dict[str, Any], status: str = "interrupted") -> None:
        """Take up a run from the record a checkpoint carries (`snapshot`): its row, as `status`, and
        its points; the harness then continues it from the checkpoint."""
        run = {k: snapshot["run"].get(k) for k in RUN_COLUMNS}
        run["status"] = status
        self.runs[run["run_id"]] = run
        self.points[run["run_id"]] = {int(p["step"]): _point(p) for p in snapshot["points"]}
        self.finals.pop(run["run_id"], None)


def snapshot(store: Any, run_id: str) -> dict[str, Any]:
    """The run's row and points so far, from either store, in the form a checkpoint carries."""
    run = store.run_row(run_id) or {}
    return {"run": {k: run.get(k) for k in RUN_COLUMNS}, "points": [_point(p) for p in store.trajectory(run_id)]}

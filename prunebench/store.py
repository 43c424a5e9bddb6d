"""The SQLite result store: runs (identity, status, environment), trajectory rows, final rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunebench.errors import StoreError, room_for
from prunebench.protocol import Protocol
from prunebench.records import RUN_COLUMNS, RunRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    budget TEXT NOT NULL DEFAULT 'equal',
    identity TEXT NOT NULL,          -- JSON of what the id hashes
    hparams TEXT NOT NULL,           -- JSON, all values (defaults included)
    protocol TEXT NOT NULL,          -- JSON, all values
    status TEXT NOT NULL,            -- running | finished | failed | interrupted
    started_at REAL,
    finished_at REAL,
    environment TEXT,                -- JSON: versions, device, git commit
    error TEXT,
    failed_step INTEGER
);
CREATE TABLE IF NOT EXISTS trajectory (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    phase TEXT,
    train_seconds REAL,
    eval_seconds REAL,
    loss REAL,
    accuracy REAL,                   -- deployed network, test set
    trained_accuracy REAL,           -- the network as trained (its own parametrisation), test set
    compression REAL,
    weights_nonzero INTEGER,
    weights_total INTEGER,
    compression_all REAL,
    per_layer TEXT,                  -- JSON {layer: [nonzero, total]}
    extra TEXT,                      -- JSON, e.g. accuracy at target compressions
    flops INTEGER,                   -- MACs per example of the deployed network as built (dense)
    flops_nonzero INTEGER,           -- MACs per example of its non-zero weights
    top5 REAL,                       -- deployed network, test set, tasks with 1,000 classes only (else NULL)
    validation_accuracy REAL,        -- deployed network, validation split held out of training (else NULL)
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS final (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    iterations INTEGER,
    train_seconds REAL,
    eval_seconds REAL,
    accuracy REAL,
    compression REAL,
    weights_nonzero INTEGER,
    weights_total INTEGER,
    compression_all REAL,
    params_nonzero INTEGER,
    params_total INTEGER,
    per_layer TEXT,
    extra TEXT,
    flops INTEGER,
    flops_nonzero INTEGER,
    flops_reference INTEGER,         -- MACs per example of the task's dense architecture
    top5 REAL,                       -- tasks with 1,000 classes only (else NULL)
    validation_accuracy REAL         -- runs with a validation split only (else NULL)
);
"""


def default_db_path() -> Path:
    """`$PRUNEBENCH_DB`, else `prunebench.sqlite` in the working directory."""
    return Path(os.environ.get("PRUNEBENCH_DB", "prunebench.sqlite"))


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 and 10000 hash alike
    return value


def protocol_non_default(protocol: Protocol) -> dict[str, Any]:
    base = Protocol()
    return {f.name: getattr(protocol, f.name) for f in dataclasses.fields(Protocol)
            if getattr(protocol, f.name) != getattr(base, f.name) and f.name != "eval_every"}


def run_identity(task: str, protocol: Protocol, method: str, hparams_non_default: dict[str, Any],
                 seed: int, budget: str = "equal") -> tuple[str, dict[str, Any]]:
    """(run_id, identity dict). Values equal to their dataclass default are left out, so adding a new
    field with a default keeps old identities; `eval_every` only changes how often we look, not the run."""
    identity: dict[str, Any] = {"task": task, "method": method, "seed": seed}
    proto = protocol_non_default(protocol)
    if proto:
        identity["protocol"] = proto
    if hparams_non_default:
        identity["hparams"] = hparams_non_default
    if budget != "equal":
        identity["budget"] = budget
    blob = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16], identity


#: Columns added after the first stores were written: table -> [(column, type)].
ADDED_COLUMNS = {
    "trajectory": [("flops", "INTEGER"), ("flops_nonzero", "INTEGER"), ("top5", "REAL"),
                   ("validation_accuracy", "REAL")],
    "final": [("flops", "INTEGER"), ("flops_nonzero", "INTEGER"), ("flops_reference", "INTEGER"), ("top5", "REAL"),
              ("validation_accuracy", "REAL")],
}


#: The store's layout, kept in SQLite's `user_version`. Raise it when a change would be misread by older
#: code (older code then refuses the store instead of corrupting it); added nullable columns (ADDED_COLUMNS)
#: need no raise. Stores written before the number existed read 0.
SCHEMA_VERSION = 1
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_store_file(path: Path | str) -> None:
    """Raise `StoreError` (one line) unless `path` is absent, empty, or an SQLite file of a schema this code
    reads. Cheap: reads the 16-byte header and one pragma; every command that takes `--db` calls it."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a result store (an SQLite file)")
    with open(path, "rb") as fh:
        if fh.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise StoreError(f"{path} is not a prunebench result store: not an SQLite file")
    try:
        with read_only(path) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable SQLite file ({exc})") from None
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer prunebench (store schema {version}; this one reads up to "
                         f"{SCHEMA_VERSION}): upgrade prunebench (pip install -U prunebench)")


@contextmanager
def read_only(path: Path | str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing store, rows as `sqlite3.Row`: it never creates, migrates or
    writes the file (exports and reports that only read)."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


class ResultStore:
    """A thin wrapper over one SQLite file. Every write commits, so a crash loses at most one row."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        check_store_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60)
        self.conn.row_factory = sqlite3.Row
        try:
            with room_for(self.path, "the result store"):
                self._initialise()
        except Exception:
            self.conn.close()
            raise

    def _initialise(self, attempts: int = 300) -> None:
        """WAL mode and the schema. Switching the journal mode needs the file to itself and does not
        wait on the busy timeout, so concurrent openers (sweep workers) retry for up to ~30 s."""
        for attempt in range(attempts):
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.executescript(SCHEMA)
                self._migrate()
                if self.conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    with self.conn:
                        self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def _migrate(self) -> None:
        """Add the columns newer code writes to a store made by older code (their old rows stay NULL)."""
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in present:
                    with self.conn:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full disk rolls it back and is a `DiskFullError` naming the store."""
        with room_for(self.path, "the result store"), self.conn:
            yield self.conn

    def status(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def start_run(self, run_id: str, *, task: str, method: str, seed: int, budget: str,
                  identity: dict, hparams: dict, protocol: dict, environment: dict) -> None:
        """Insert (or reset) the run row; any earlier trajectory of this identity is dropped."""
        with self._tx() as c:
            c.execute("DELETE FROM trajectory WHERE run_id = ?", (run_id,))
            c.execute("DELETE FROM final WHERE run_id = ?", (run_id,))
            c.execute(
                "INSERT OR REPLACE INTO runs (run_id, task, method, seed, budget, identity, hparams, protocol,"
                " status, started_at, environment) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, task, method, seed, budget, json.dumps(identity), json.dumps(hparams),
                 json.dumps(protocol), "running", time.time(), json.dumps(environment)),
            )

    def resume_run(self, run_id: str, step: int, environment: dict) -> None:
        """A stopped run continues from its checkpoint at `step`: back to 'running', its points after
        `step` dropped (they are evaluated again), and the environment it continues in appended to
        the run's environment under "resumed" (a list of {"step", **environment})."""
        with self._tx() as c:
            row = c.execute("SELECT environment FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run {run_id} to resume")
            env = json.loads(row["environment"] or "{}")
            env.setdefault("resumed", []).append({"step": step, **environment})
            c.execute("DELETE FROM trajectory WHERE run_id = ? AND step > ?", (run_id, step))
            c.execute("UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, failed_step = NULL,"
                      " environment = ? WHERE run_id = ?", (json.dumps(env), run_id))

    @staticmethod
    def _insert(conn: sqlite3.Connection, table: str, run_id: str, row: dict[str, Any]) -> None:
        """INSERT OR REPLACE one row of `table` for `run_id`; dict-valued columns are stored as JSON."""
        values = [json.dumps(v) if key in ("per_layer", "extra") and not isinstance(v, str) else v
                  for key, v in row.items()]
        conn.execute(f"INSERT OR REPLACE INTO {table} (run_id, {', '.join(row)}) "
                     f"VALUES (?, {', '.join('?' * len(row))})", (run_id, *values))

    def add_point(self, run_id: str, row: dict[str, Any]) -> None:
        with self._tx() as c:
            self._insert(c, "trajectory", run_id, row)

    def finish(self, run_id: str, final: dict[str, Any]) -> None:
        with self._tx() as c:
            self._insert(c, "final", run_id, final)
            c.execute("UPDATE runs SET status = 'finished', finished_at = ? WHERE run_id = ?", (time.time(), run_id))

    def mark(self, run_id: str, status: str, error: str | None = None, failed_step: int | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET status = ?, finished_at = ?, error = ?, failed_step = ? WHERE run_id = ?",
                      (status, time.time(), error, failed_step, run_id))

    def apply(self, record: RunRecord) -> None:
        """Write a worker's record of one run (the driver is the store's only writer): in one
        transaction, the run's row, points and final row replace whatever the store held for that
        identity. Applying the same record twice leaves the same single run."""
        run = {k: record.run.get(k) for k in RUN_COLUMNS}
        if run["status"] == "finished" and record.final is None:
            raise ValueError(f"run {record.run_id} is marked finished but its record has no final row")
        with self._tx() as c:
            c.execute("DELETE FROM trajectory WHERE run_id = ?", (record.run_id,))
            c.execute("DELETE FROM final WHERE run_id = ?", (record.run_id,))
            c.execute(f"INSERT OR REPLACE INTO runs ({', '.join(run)}) VALUES ({', '.join('?' * len(run))})",
                      tuple(run.values()))
            for point in record.points:
                self._insert(c, "trajectory", record.run_id, point)
            if record.final is not None:
                self._insert(c, "final", record.run_id, record.final)

    def run_row(self, run_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def final_row(self, run_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM final WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def final_compression(self, run_id: str) -> float | None:
        """The compression of a finished run's deployed network (None: not finished), and nothing else of
        it: the matched-compression search reads only this, never accuracy."""
        row = self.conn.execute("SELECT final.compression FROM final JOIN runs ON runs.run_id = final.run_id "
                                "WHERE final.run_id = ? AND runs.status = 'finished'", (run_id,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def trajectory(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM trajectory WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
        return [dict(r) for r in rows]

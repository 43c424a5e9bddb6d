"""The committed results hold together with this code: every run in the committed stores hashes to its
stored identity from its row (so no committed result is orphaned by a change of names, defaults or
hashing), and the committed leaderboards' rows are what the leaderboard code makes of the store."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from prunebench.protocol import Protocol
from prunebench.registry import get_method
from prunebench.report.leaderboard import build_leaderboard
from prunebench.report.matched import build_matched, read_matched
from prunebench.store import _canonical, run_identity

ROOT = Path(__file__).resolve().parents[1]
STORES = ("leaderboards/foundation/runs.sqlite", "leaderboards/foundation/calibration.sqlite")
LEADERBOARDS = sorted(p.name for p in (ROOT / "leaderboards").glob("*.csv") if not p.stem.endswith("-matched"))
#: The committed matched-compression tables (`prunebench matched`): each JSON names its settings and store.
MATCHED = sorted(p.name for p in (ROOT / "leaderboards").glob("*-matched.json"))


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists where the dataclasses hold tuples (per-layer values, lr milestones)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def identity_from_row(row: sqlite3.Row) -> tuple[str, dict[str, Any]]:
    """(run_id, identity) as the harness computes them for the run a stored row describes: its task, method,
    seed, budget and protocol, and the hyperparameters (all stored) that differ from the method's defaults."""
    hparams_class = get_method(row["method"]).hparams_class
    known = {f.name for f in dataclasses.fields(hparams_class)}
    stored = json.loads(row["hparams"])
    assert set(stored) <= known, f"{row['run_id']}: hyperparameters this code lacks: {set(stored) - known}"
    values = hparams_class(**_tuples(stored))
    values.validate()
    protocol = Protocol(**_tuples(json.loads(row["protocol"])))
    return run_identity(row["task"], protocol, row["method"], values.non_default(), row["seed"], row["budget"])


def _rows(db: str) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{ROOT / db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()


def _mismatches(rows: list[sqlite3.Row]) -> list[str]:
    wrong = []
    for row in rows:
        stored = json.loads(row["identity"])
        run_id, identity = identity_from_row(row)
        if run_id != row["run_id"] or _canonical(identity) != _canonical(stored):
            wrong.append(f"{row['run_id']} ({row['method']} on {row['task']}) -> {run_id} {identity}")
    return wrong


def test_every_run_of_the_foundation_store_hashes_to_its_identity_from_its_row():
    rows = _rows(STORES[0])
    assert len(rows) >= 165
    wrong = _mismatches(rows)
    assert not wrong, "stored runs whose row no longer hashes to their identity:\n" + "\n".join(wrong)


#: Calibration runs made while dynthresh's default lam was 3e-4: their identities name lam 5e-4 (today's
#: default) or leave out 3e-4 (then the default), so this code gives them other ids (544ca30f's is now
#: 66c1c767, the default run of runs.sqlite; this store's 66c1c767 is lam 3e-4). History, in no leaderboard.
STALE_CALIBRATION = {"312cef4ac589b3bd", "3c7f7ca0df985b3a", "544ca30fbb03696e", "66c1c7672bfbfc29"}


def test_every_calibration_run_hashes_to_its_identity_from_its_row_but_the_four_before_the_default():
    rows = _rows(STORES[1])
    assert len(rows) >= 32
    wrong = {line.split()[0] for line in _mismatches(rows)}
    assert wrong == STALE_CALIBRATION
    for row in rows:  # their stored identities still hash to their ids: the hashing itself is unchanged
        identity = json.loads(row["identity"])
        rehashed = run_identity(identity["task"], Protocol(**_tuples(identity.get("protocol", {}))),
                                identity["method"], identity.get("hparams", {}), identity["seed"],
                                identity.get("budget", "equal"))
        assert rehashed[0] == row["run_id"]


@pytest.mark.parametrize("name", LEADERBOARDS)
def test_committed_leaderboard_rows_are_the_stores(name, tmp_path):
    db = STORES[0]
    board = build_leaderboard(ROOT / db, name.removesuffix(".csv"), db_label=db)
    made = board.to_csv(tmp_path / name).read_text().splitlines()
    committed = (ROOT / "leaderboards" / name).read_text().splitlines()
    assert made[0] == committed[0]  # the columns
    assert made[1:] == committed[1:]


def test_the_committed_leaderboards_are_found():
    assert LEADERBOARDS == ["lenet300.csv", "lenet5.csv"]


def test_every_run_of_the_matched_store_hashes_to_its_identity_from_its_row():
    path = "leaderboards/foundation/matched.sqlite"
    if not (ROOT / path).is_file():
        pytest.skip("no matched store committed")
    wrong = _mismatches(_rows(path))
    assert not wrong, "stored runs whose row no longer hashes to their identity:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", MATCHED)
def test_committed_matched_tables_are_the_stores(name, tmp_path):
    """The search replayed on the committed store gives the committed cells: the same knob values, probes,
    seed runs, numbers and marks (a change of a default, of the search or of identities would move them)."""
    settings, db = read_matched(ROOT / "leaderboards" / name, ROOT / "leaderboards/foundation/matched.sqlite")
    db = db.resolve()
    assert db.is_file() and db.is_relative_to(ROOT / "leaderboards")
    table = build_matched(db, settings, db_label=str(db.relative_to(ROOT)))
    made = table.write(tmp_path)[1].read_text().splitlines()
    committed = (ROOT / "leaderboards" / name.replace(".json", ".csv")).read_text().splitlines()
    assert made[0] == committed[0]
    assert made[1:] == committed[1:]

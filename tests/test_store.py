"""The result store opened by several processes at once on a brand-new file (sweep --jobs workers).

Switching a new file to WAL needs it to itself and SQLite does not apply the busy timeout there, so
before the retry in `ResultStore._initialise` about 1 opener in 80 failed with 'database is locked'
in this race (measured: 1 of 80 before, 0 of 80 after). The test repeats the race to catch that."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from prunebench.store import ResultStore


def _open_and_write(args: tuple[str, int, float]) -> str:
    path, i, start_at = args
    time.sleep(max(0.0, start_at - time.time()))  # every worker opens the new file at the same instant
    try:
        store = ResultStore(path)
        store.start_run(f"run{i}", task="xor", method="dense", seed=i, budget="equal", identity={}, hparams={},
                        protocol={}, environment={})
        store.close()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return repr(exc)
    return "ok"


@pytest.mark.slow  # many processes opening stores at once
def test_concurrent_openers_of_new_stores_all_succeed(tmp_path):
    results = []
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        for rep in range(15):
            path = str(tmp_path / f"shared{rep}.sqlite")
            start_at = time.time() + 0.5
            results += pool.map(_open_and_write, [(path, i, start_at) for i in range(8)], chunksize=1)
    assert [r for r in results if r != "ok"] == []
    store = ResultStore(tmp_path / "shared0.sqlite")
    assert store.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 8
    store.close()


def test_a_store_from_before_the_flops_columns_is_migrated_and_still_loads(tmp_path):
    import sqlite3

    from prunebench.results import load_runs
    from prunebench.store import ADDED_COLUMNS, SCHEMA

    old_schema = SCHEMA
    for columns in ADDED_COLUMNS.values():
        for name, _kind in columns:
            old_schema = "\n".join(line for line in old_schema.splitlines() if not line.strip().startswith(name + " "))
    old_schema = old_schema.replace("extra TEXT,\n)", "extra TEXT\n)")
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO runs (run_id, task, method, seed, identity, hparams, protocol, status) "
                     "VALUES ('r1', 'xor', 'dense', 0, '{}', '{}', '{}', 'finished')")
        conn.execute("INSERT INTO final (run_id, accuracy, compression) VALUES ('r1', 0.9, 1.0)")
        assert "flops" not in {row[1] for row in conn.execute("PRAGMA table_info(final)")}
    runs = load_runs(path)  # reading does not need (or make) the new columns
    assert runs.loc[0, "accuracy"] == 0.9 and runs["flops"].isna().all()
    store = ResultStore(path)
    store.finish("r1", {"accuracy": 0.9, "compression": 1.0, "flops": 15, "flops_nonzero": 10, "flops_reference": 15})
    store.close()
    assert load_runs(path).loc[0, "flops_nonzero"] == 10

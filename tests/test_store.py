"""The result store opened by several processes at once on a brand-new file (sweep --jobs workers).

Switching a new file to WAL needs it to itself and SQLite does not apply the busy timeout there, so
before the retry in `ResultStore._initialise` about 1 opener in 80 failed with 'database is locked'
in this race (measured: 1 of 80 before, 0 of 80 after). The test repeats the race to catch that."""

from __future__ import annotations

import multiprocessing
import time

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

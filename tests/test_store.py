"""The result store opened while another connection (a sweep worker) holds a write transaction."""

from __future__ import annotations

import threading
import time

from prunebench.store import ResultStore


def test_opening_while_another_writer_holds_the_lock_waits_instead_of_failing(tmp_path):
    path = tmp_path / "shared.sqlite"
    holder = ResultStore(path)
    holder.conn.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    errors: list[BaseException] = []
    modes: list[str] = []

    def open_store() -> None:
        try:
            store = ResultStore(path)
            modes.append(store.conn.execute("PRAGMA journal_mode").fetchone()[0])
            store.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=open_store)
    thread.start()
    time.sleep(1.0)
    holder.conn.execute("COMMIT")
    thread.join(timeout=60)
    assert errors == [] and modes == ["wal"]
    holder.close()

"""A write that finds no room (issue 32): one line naming the file and the space left, exit status 2, the
run's last checkpoint kept and the same command continuing it once there is room; the same for the result
store, export's `--out` and the site. Two ways to run out of room on a test machine: the file-size limit
(RLIMIT_FSIZE, every Linux; writes fail with EFBIG) and, where this process may mount, a small tmpfs (a
real full filesystem, ENOSPC)."""

from __future__ import annotations

import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunebench.errors import DiskFullError, disk_full, free_space, is_disk_full

pytestmark = pytest.mark.slow

RUN = ["run", "--method", "dynthresh", "--task", "lenet300", "--iterations", "600", "--eval-every", "200",
       "--checkpoint-every", "0", "--seed", "0", "--json"]


def prunebench(*args: str, data_dir: Path, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "prunebench", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=600, preexec_fn=limit, env={
                              **__import__("os").environ, "COLUMNS": "400"})


def final(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def status(db: Path) -> tuple[str, str]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, error FROM runs").fetchone()


def resumed_from(db: Path) -> int | None:
    with sqlite3.connect(db) as conn:
        environment = json.loads(conn.execute("SELECT environment FROM runs").fetchone()[0])
    resumed = environment.get("resumed")
    return resumed[0]["step"] if resumed else None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict:
    return final(prunebench(*RUN, "--db", str(tmp_path_factory.mktemp("whole") / "runs.sqlite"), data_dir=mnist_dir))


def same_run(result: dict, reference: dict) -> None:
    for key in ("accuracy", "compression", "nonzero", "iterations"):
        assert result[key] == reference[key], key


def test_is_disk_full_and_its_message(tmp_path):
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(OSError(27, "File too large"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                     "\"No space left on device\" })"))
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    error = disk_full(tmp_path / "x" / "f.db", "the result store", needed=2_100_000)
    assert isinstance(error, DiskFullError)
    assert str(error).startswith(f"no space left to write the result store {tmp_path / 'x' / 'f.db'} (needs 2.1 MB, ")
    limited = disk_full(tmp_path / "f.db", "the result store", cause=OSError(27, "File too large"))
    assert "file-size limit" not in str(limited)  # this process has none: the free space is what it says
    assert f"{free_space(tmp_path)} free there): free some space and run the same command again" in str(error)
    assert free_space(tmp_path / "not" / "yet").endswith(("bytes", "kB", "MB", "GB"))


def test_file_size_limit_on_the_checkpoint_is_one_line_and_the_rerun_finishes(tmp_path, mnist_dir, uninterrupted):
    """A checkpoint larger than the file-size limit: EFBIG, exit 2, no partial file; the run is left to continue
    (status interrupted), and the same command without the limit finishes it as an uninterrupted run."""
    db = tmp_path / "runs.sqlite"
    done = prunebench(*RUN, "--db", str(db), data_dir=mnist_dir, file_limit=1_000_000)
    line = one_line_error(done)
    checkpoints = tmp_path / "runs.checkpoints"
    assert line.startswith(f"error: no space left to write the checkpoint {checkpoints}/"), line
    assert "(needs 6.9 MB, larger than this process's file-size limit of 1.0 MB, `ulimit -f`): raise the limit and " \
           "run the same command again (it had no checkpoint yet)" in line
    assert list(checkpoints.iterdir()) == []  # the partial file was removed
    assert status(db) == ("interrupted", f"stopped at step 200: {line.removeprefix('error: ')}")
    same_run(final(prunebench(*RUN, "--db", str(db), data_dir=mnist_dir)), uninterrupted)


def test_a_sweep_worker_out_of_room_stops_its_run_and_the_sweep_says_why(tmp_path, mnist_dir):
    """In a sweep the worker's run comes back 'interrupted' with the one-line reason, printed beside the run;
    the sweep exits 2 and says that the same command continues it."""
    db = tmp_path / "runs.sqlite"
    done = prunebench("sweep", "--methods", "dynthresh", "--tasks", "lenet300", "--iterations", "600",
                      "--eval-every", "200", "--checkpoint-every", "0", "--no-dense", "--jobs", "2", "--db", str(db),
                      data_dir=mnist_dir, file_limit=1_000_000)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert "interrupted dynthresh [iterations=600] on lenet300 seed 0: stopped at step 200: no space left to write " \
           f"the checkpoint {tmp_path / 'runs.checkpoints'}/" in output
    assert "1 run(s) stopped (the reason is beside each): once it is mended, rerun the same command" in output
    assert "Traceback" not in output


def test_file_size_limit_on_an_export_leaves_no_partial_file(tmp_path, mnist_dir):
    db = tmp_path / "runs.sqlite"
    run = final(prunebench(*RUN, "--save-model", "--db", str(db), data_dir=mnist_dir))
    out = tmp_path / "net.safetensors"
    line = one_line_error(prunebench("export", run["run_id"], "--format", "safetensors", "--out", str(out),
                                     "--db", str(db), data_dir=mnist_dir, file_limit=500_000))
    assert line.startswith(f"error: no space left to write the safetensors export {out} ("), line
    assert not out.exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 10 MB tmpfs (a real full filesystem), where this process may mount one; it grows with `grow`."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]}); the file-size-limit "
                    "tests cover the same code")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_full_disk_keeps_the_last_checkpoint_and_the_same_command_continues(small_disk, mnist_dir, uninterrupted):
    """On 10 MB the first checkpoint (6.9 MB) fits and the second, written beside it, does not: exit 2 naming
    the file and the free space; once the disk grows the same command continues from the first one."""
    db = small_disk / "runs.sqlite"
    line = one_line_error(prunebench(*RUN, "--db", str(db), data_dir=mnist_dir))
    assert line.startswith(f"error: no space left to write the checkpoint {small_disk / 'runs.checkpoints'}/"), line
    assert "free there): free some space and run the same command again (it continues from its last checkpoint, " \
           "kept)" in line
    (kept,) = (small_disk / "runs.checkpoints").iterdir()
    assert kept.suffix == ".pt"
    assert status(db) == ("interrupted", f"stopped at step 400: {line.removeprefix('error: ')}")
    grow(small_disk, "40m")
    result = final(prunebench(*RUN, "--db", str(db), data_dir=mnist_dir))
    assert resumed_from(db) == 200
    same_run(result, uninterrupted)


def test_full_store_is_one_line_and_the_run_continues(small_disk, mnist_dir, uninterrupted):
    """The disk full before the store can take the run's points: one line naming the store; the store stays
    readable, and with room again the same command finishes the run."""
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (10 * 1024 * 1024 - 40 * 1024))  # about 40 kB left
    db = small_disk / "runs.sqlite"
    line = one_line_error(prunebench(*RUN, "--db", str(db), data_dir=mnist_dir))
    assert line.startswith("error: no space left to write ") and " free there): free some space and run the same " \
                                                                 "command again" in line, line
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    filler.unlink()
    grow(small_disk, "40m")
    same_run(final(prunebench(*RUN, "--db", str(db), data_dir=mnist_dir)), uninterrupted)


def test_full_disk_under_export_and_site(small_disk, mnist_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    run = final(prunebench(*RUN, "--save-model", "--db", str(db), data_dir=mnist_dir))
    (small_disk / "filler").write_bytes(b"\0" * (10 * 1024 * 1024 - 200 * 1024))
    out = small_disk / "net.safetensors"
    line = one_line_error(prunebench("export", run["run_id"], "--format", "safetensors", "--out", str(out),
                                     "--db", str(db), data_dir=mnist_dir))
    assert line.startswith(f"error: no space left to write the safetensors export {out} ("), line
    assert not out.exists()
    (small_disk / "filler").write_bytes(b"\0" * (10 * 1024 * 1024 - 20 * 1024))  # the site's figures need more
    site = small_disk / "site"
    line = one_line_error(prunebench("site", "--out", str(site), "--db", str(db), "--matched-dir",
                                     str(tmp_path / "none"), data_dir=mnist_dir))
    assert line.startswith(f"error: no space left to write the site {site} ("), line

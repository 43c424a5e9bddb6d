"""`RunRequest`: every committed run rebuilt from its row has its stored identity; `identity()` builds no
network and agrees with `resolve()`; `argv()` parses back through the CLI to the same request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sqlite3
from pathlib import Path

import pytest

from prunebench.registry import get_task
from prunebench.request import RunRequest, make_spec
from prunebench.store import _canonical
from prunebench.tasks import TASKS

STORES = [Path(__file__).parent.parent / "leaderboards" / "foundation" / name
          for name in ("runs.sqlite", "calibration.sqlite")]


def _rows(path: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM runs")]
    finally:
        con.close()


#: calibration.sqlite runs stored before the task's protocol moved off the dataclass defaults (their identity
#: has no "protocol"): no code since resolves them (export's spec_from_row refused them alike).
LEGACY = {"312cef4ac589b3bd", "3c7f7ca0df985b3a", "544ca30fbb03696e"}


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.name)
def test_every_stored_run_rebuilds_to_its_identity(store: Path) -> None:
    rows = _rows(store)
    assert rows
    for row in rows:
        identity = json.loads(row["identity"])
        blob = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(blob.encode()).hexdigest()[:16] == row["run_id"]
        if row["run_id"] in LEGACY:
            with pytest.raises(ValueError, match="cannot be run again"):
                RunRequest.from_row(row)
            continue
        request = RunRequest.from_row(row)
        run_id, identity = request.identity()
        assert run_id == row["run_id"]
        assert json.dumps(identity, sort_keys=True) == json.dumps(json.loads(row["identity"]), sort_keys=True)


REQUESTS = [
    RunRequest("lenet300", "dynthresh", 1, {"lam": 2e-6, "scale": "layer"}, iterations=300, eval_every=100),
    RunRequest("lenet300", "dns", 2, {"c_rate": (6.0, 4.5, 3.0)}, budget="paper",
               protocol={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}),
    RunRequest("vgg-cifar10", "sparse-vd", 0, protocol={"batch_size": 64}),
    RunRequest("xor", "dense", 0, iterations=200),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r.task}-{r.method}")
def test_identity_builds_no_network_and_equals_resolve(request_: RunRequest, monkeypatch) -> None:
    resolved = request_.resolve().identity

    def refuse(*args, **kwargs):
        raise AssertionError("identity() built a network")

    monkeypatch.setitem(TASKS, request_.task, dataclasses.replace(get_task(request_.task), architecture=refuse))
    assert request_.identity() == resolved
    assert request_.run_id == resolved[0]
    assert pickle.loads(pickle.dumps(request_)) == request_  # a worker's job carries it
    with pytest.raises(AssertionError):
        request_.resolve()


def test_make_spec_is_the_resolved_request() -> None:
    spec = make_spec("xor", "dynthresh", 3, {"lam": 1e-3}, 100, 10)
    assert spec.run_id == RunRequest("xor", "dynthresh", 3, {"lam": 1e-3}, 100, 10).run_id
    assert RunRequest("xor", "dynthresh", hparams={"lam": 1e-3}) == RunRequest("xor", "dynthresh",
                                                                               hparams=(("lam", 1e-3),))


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r.task}-{r.method}")
def test_argv_parses_back_to_the_same_request(request_: RunRequest, monkeypatch) -> None:
    from click.testing import CliRunner

    import prunebench.cli as cli
    from prunebench import harness

    seen = {}

    def capture(spec, *args, **kwargs):
        seen["run_id"] = spec.run_id
        raise SystemExit(0)

    monkeypatch.setattr(harness, "train", capture)
    argv = request_.argv("--db", ":memory:")
    assert argv[:2] == ["prunebench", "run"]
    result = CliRunner().invoke(cli.main, argv[1:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["run_id"] == request_.run_id


def test_sweep_argv_is_the_leaderboard_command() -> None:
    request = RunRequest("lenet300", "dst", 0, {"alpha": 5e-4}, iterations=18_750, eval_every=100,
                         protocol={"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 64})
    assert request.command("--db", "x.sqlite", seeds=[0, 1, 2]) == (
        "prunebench sweep --methods dst --tasks lenet300 --seeds 0-2 --batch-size 64 --iterations 18750 --lr 0.01 "
        "--momentum 0.9 --optimizer sgd --eval-every 100 --grid alpha=0.0005 --db x.sqlite")

"""`--tensorboard DIR`: every evaluation point of a run (and of each run of a sweep, in process or in worker
processes) lands in its own TensorBoard directory with the store's steps and values; a resumed run does not
duplicate points; without the extra the commands stop with one line before training."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from prunebench.cli import main
from prunebench.evaluation import Evaluation
from prunebench.harness import train
from prunebench.observers import Observer, Observers
from prunebench.request import RunRequest, make_spec
from prunebench.running.worker import RunJob, WorkerError, execute
from prunebench.store import ResultStore
from prunebench.tensorboard import point_scalars


def logged(path: Path) -> tuple[dict[str, list[tuple[int, float]]], list[int]]:
    """Every scalar tag's (step, value) events in `path`, and the steps of the "run" text record."""
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, [e.step for e in acc.Tensors("run/text_summary")]


def expected(trajectory: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard must show for the store's trajectory rows (values as float32, as events hold them)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in trajectory:
        values = {"accuracy/top1": row["accuracy"], "compression/weights": row["compression"],
                  "compression/all_parameters": row["compression_all"], "loss/train": row["loss"],
                  "time/train_seconds": row["train_seconds"], "time/eval_seconds": row["eval_seconds"]}
        for layer, (nonzero, total) in json.loads(row["per_layer"]).items():
            values[f"kept/{layer}"] = nonzero / total
        for tag, value in values.items():
            out.setdefault(tag, []).append((row["step"], float(np.float32(value))))
    return out


def run_dir(root: Path, task: str, method: str, seed: int, run_id: str) -> Path:
    return root / task / method / f"seed{seed}-{run_id}"


def test_run_streams_every_point(tmp_path):
    db, tb = tmp_path / "run.sqlite", tmp_path / "tb"
    result = CliRunner().invoke(main, ["run", "--method", "dynthresh", "--task", "xor", "--iterations", "60",
                                       "--eval-every", "20", "--db", str(db), "--data-dir", str(tmp_path),
                                       "--tensorboard", str(tb), "--json"])
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    store = ResultStore(db)
    trajectory = store.trajectory(run_id)
    store.close()
    scalars, text_steps = logged(run_dir(tb, "xor", "dynthresh", 0, run_id))
    assert [p["step"] for p in trajectory] == [20, 40, 60]
    assert {"kept/fc1", "kept/fc2", "loss/train", "time/train_seconds"} <= set(scalars)
    assert scalars == expected(trajectory)
    assert text_steps == [0]  # the run's identity and hyperparameters, once


@pytest.mark.parametrize("jobs", [pytest.param(2, marks=pytest.mark.slow), 1])  # 2: worker processes
def test_sweep_writes_one_directory_per_run(tmp_path, jobs):
    db, tb = tmp_path / "sweep.sqlite", tmp_path / "tb"
    result = CliRunner().invoke(main, ["sweep", "--methods", "dense,magnitude", "--tasks", "xor", "--no-dense",
                                       "--jobs", str(jobs), "--iterations", "100", "--eval-every", "50",
                                       "--db", str(db), "--data-dir", str(tmp_path), "--tensorboard", str(tb)])
    assert result.exit_code == 0, result.output
    store = ResultStore(db)
    runs = store.conn.execute("SELECT run_id, task, method, seed, status FROM runs ORDER BY method").fetchall()
    assert [(r["method"], r["status"]) for r in runs] == [("dense", "finished"), ("magnitude", "finished")]
    for r in runs:
        path = run_dir(tb, r["task"], r["method"], r["seed"], r["run_id"])
        assert len(list(path.glob("events.out.tfevents.*"))) == 1
        trajectory = store.trajectory(r["run_id"])
        assert [p["step"] for p in trajectory] == [50, 100]
        scalars, text_steps = logged(path)
        assert scalars == expected(trajectory) and text_steps == [0]
    store.close()
    assert sorted(p.name for p in (tb / "xor").iterdir()) == ["dense", "magnitude"]


class StopInEvaluation(Observer):
    """Ctrl-C at the evaluation of `step`, after the observers before it have seen the point."""

    def __init__(self, step: int) -> None:
        self.at = step

    def evaluation(self, point: Evaluation) -> None:
        if point.step == self.at:
            raise KeyboardInterrupt


def next_second() -> None:
    """Event files are named by the second they were opened in, and read in name order."""
    now = time.time()
    time.sleep(int(now) + 1.01 - now)


def test_a_resumed_run_continues_its_directory_without_duplicates(tmp_path, store):
    from prunebench.tensorboard import TensorBoardObserver

    tb = tmp_path / "tb"
    spec = make_spec("xor", "dynthresh", seed=2, iterations=100, eval_every=20)
    path = run_dir(tb, "xor", "dynthresh", 2, spec.run_id)
    with pytest.raises(KeyboardInterrupt):  # checkpoint at 40; step 60 reaches TensorBoard, then Ctrl-C
        train(spec, store, tmp_path, device="cpu", checkpoint_seconds=0,
              observer=Observers(TensorBoardObserver(tb), StopInEvaluation(60)))
    first, _ = logged(path)
    assert [s for s, _ in first["time/train_seconds"]] == [20, 40, 60]
    next_second()
    train(spec, store, tmp_path, device="cpu", checkpoint_seconds=0, observer=TensorBoardObserver(tb))
    trajectory = store.trajectory(spec.run_id)
    assert [p["step"] for p in trajectory] == [20, 40, 60, 80, 100]
    assert first["time/train_seconds"][2][1] != float(np.float32(trajectory[2]["train_seconds"]))  # timed again
    scalars, text_steps = logged(path)
    assert len(list(path.glob("events.out.tfevents.*"))) == 2
    assert scalars == expected(trajectory)  # step 60 once, the resumed process's value
    assert text_steps == [0]  # not recorded again on resume

    next_second()
    train(spec, store, tmp_path, device="cpu", force=True, observer=TensorBoardObserver(tb))  # starts over
    scalars, text_steps = logged(path)
    assert scalars == expected(store.trajectory(spec.run_id)) and text_steps == [0]


def test_point_scalars_name_top5_and_trained_accuracy():
    point = Evaluation(step=5, phase="train", train_seconds=2.0, loss=1.5, accuracy=0.5, compression=4.0,
                       weights_nonzero=3, weights_total=12, compression_all=2.0, per_layer={"conv1": (3, 12)},
                       flops=12, flops_nonzero=3, top5=0.75, trained_accuracy=0.625)
    assert point_scalars(point) == {"accuracy/top1": 0.5, "accuracy/top5": 0.75, "accuracy/trained": 0.625,
                                    "compression/weights": 4.0, "compression/all_parameters": 2.0,
                                    "kept/conv1": 0.25, "loss/train": 1.5, "time/train_seconds": 2.0}


@pytest.fixture()
def no_tensorboard(monkeypatch):
    """As if the extra were not installed: importing tensorboard (and torch's writer) fails."""
    for name in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("command", [
    ["run", "--method", "dense", "--task", "xor"],
    ["sweep", "--methods", "dense", "--tasks", "xor", "--jobs", "2"],
])
def test_without_the_extra_one_line_and_nothing_trains(command, tmp_path, no_tensorboard):
    db = tmp_path / "x.sqlite"
    result = CliRunner().invoke(main, [*command, "--iterations", "20", "--db", str(db), "--data-dir", str(tmp_path),
                                       "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --tensorboard needs tensorboard: pip install 'prunebench[tensorboard]'"]
    assert not db.exists() and not (tmp_path / "tb").exists()


def test_a_worker_without_the_extra_does_not_start_the_run(tmp_path, no_tensorboard):
    args = {"task": "xor", "method": "dense", "seed": 0, "iterations": 20}
    job = RunJob(make_spec(**args).run_id, "dense on xor", RunRequest(**args), str(tmp_path), str(tmp_path / "ck"),
                 tensorboard=str(tmp_path / "tb"))
    with pytest.raises(WorkerError, match=r"pip install 'prunebench\[tensorboard\]'"):
        execute(job)

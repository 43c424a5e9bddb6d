"""Executors: the same small sweep (XOR dense + dynthresh, a short lenet300 run) through Ray (a cluster of
a head and two nodes on this machine, one of them lost mid-sweep) and submitit (local processes, one run
per job and two packed), each compared with the sweep trained in this process; the `--executor` CLI and
its missing-extra error; the store's one-writer `apply`; a worker continuing another worker's run."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from prunebench import checkpoint as checkpointing
from prunebench import harness
from prunebench.checkpoint import checkpoint_dir, checkpoint_path
from prunebench.cli import main
from prunebench.errors import MissingExtraError
from prunebench.records import RecordingStore
from prunebench.request import RunRequest, make_spec
from prunebench.running import executors
from prunebench.running.executors import RayExecutor, SubmititExecutor, require
from prunebench.running.sweep import SweepPlan, SweepReport, plan_sweep, run_sweep
from prunebench.running.worker import RunJob, execute, finished_record_path
from prunebench.store import ResultStore

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TIMINGS = ("train_seconds", "eval_seconds")
NODE_MEMORY = 100 * 1024**2  # each Ray node's object store (the default takes 30% of the machine's memory)


def sweep_plan(store: ResultStore | None = None) -> SweepPlan:
    """XOR dense + dynthresh (a few hundred steps) and lenet300 dense for 300 steps (a few seconds),
    evaluated (and, with checkpoint_seconds=0, checkpointed) every 50-100 steps."""
    xor = plan_sweep(["dynthresh"], ["xor"], [0], {}, store, iterations=200, eval_every=100)
    mnist = plan_sweep(["dense"], ["lenet300"], [0], {}, store, iterations=300, eval_every=50, with_dense=False)
    return SweepPlan(xor.runs + mnist.runs)


def contents(db: Path, timeless) -> dict[str, dict[str, Any]]:
    """What the store holds of each run, timings left out (the only thing that differs between machines
    and executors): status, final row, trajectory."""
    store = ResultStore(db)
    try:
        out = {}
        for row in store.conn.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall():
            final = store.final_row(row["run_id"])
            out[row["run_id"]] = {
                "status": row["status"],
                "final": {k: v for k, v in final.items() if k not in TIMINGS} if final else None,
                "points": timeless(store.trajectory(row["run_id"]))}
        return out
    finally:
        store.close()


def assert_each_finished_once(report: SweepReport, plan: SweepPlan) -> None:
    assert not report.interrupted
    outcomes = [(o.run.spec.run_id, o.status, o.error) for o in report.outcomes]
    assert sorted(outcomes) == sorted((r.spec.run_id, "finished", None) for r in plan.runs), outcomes


@pytest.fixture(scope="module")
def local_result(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, timeless) -> dict[str, dict[str, Any]]:
    """The sweep trained in this process, one torch thread (as every executor below gives each run)."""
    db = tmp_path_factory.mktemp("local") / "local.sqlite"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = sweep_plan()
        report = run_sweep(plan, db, mnist_dir, checkpoint_seconds=0)
    finally:
        torch.set_num_threads(threads)
    assert_each_finished_once(report, plan)
    result = contents(db, timeless)
    assert sorted(result) == sorted(r.spec.run_id for r in plan.runs)
    return result


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A Ray cluster on this machine: a head that runs no tasks (the cluster's control plane and this
    process's connection) and two 1-CPU nodes, shared by the Ray tests; `nodes` are the task nodes."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": NODE_MEMORY,
                                                            "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=NODE_MEMORY) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        yield {"cluster": cluster, "nodes": nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()
        for sig, handler in handlers.items():  # Ray's head node and ray.init install SIGTERM handlers and leave them
            signal.signal(sig, handler)


def test_ray_cluster_fills_the_store_as_this_process_does(ray_cluster, local_result, mnist_dir, timeless, tmp_path):
    db = tmp_path / "ray.sqlite"
    plan = sweep_plan()
    report = run_sweep(plan, db, mnist_dir, executor=RayExecutor(cpus_per_run=1), checkpoint_seconds=0)
    assert_each_finished_once(report, plan)
    assert contents(db, timeless) == local_result
    assert not list(checkpoint_dir(db).iterdir())  # checkpoints and kept records are gone once stored


@pytest.mark.parametrize("death", ["node", "sigterm"])
def test_a_run_whose_worker_dies_mid_sweep_finishes_once(death, ray_cluster, local_result, mnist_dir, timeless,
                                                         tmp_path, monkeypatch):
    """Once lenet300 is past a checkpoint, its node dies ('node': the worker process and the raylet killed)
    or its worker is stopped ('sigterm': a drained node; the run comes back 'interrupted'). Either way
    the run is started again (by Ray; by the executor) and continues from that checkpoint, on the other
    node when its own is gone. Both happen right after the run's first checkpoint, inside the training
    loop: the worker sends the SIGTERM to itself, or waits there for its node to be killed (a signal
    sent from outside at a random time can arrive after the last step, and then the run rightly
    finishes without a restart)."""
    import ray

    cluster, nodes = ray_cluster["cluster"], ray_cluster["nodes"]
    db, markers = tmp_path / "lost.sqlite", tmp_path / "markers"
    markers.mkdir()
    checkpoints = checkpoint_dir(db)
    real, where = executors.execute, str(markers)
    plan = sweep_plan()
    victim = next(r.spec.run_id for r in plan.runs if r.spec.task.name == "lenet300")  # seconds past a checkpoint
    stop_itself = death == "sigterm"
    waiting = Path(where, "waiting for the kill")

    def execute_noting_node(job: RunJob):  # pickled by value into the Ray task: notes where it runs
        first = not any(Path(where).glob(f"{job.run_id}@*"))
        # one marker per start: Ray may run the retry in the same worker process on the same node
        Path(where, f"{job.run_id}@{ray.get_runtime_context().get_node_id()}@{os.getpid()}@{time.time_ns()}").touch()
        if not (first and job.run_id == victim):
            return real(job)
        saved = checkpointing.save_checkpoint

        def save_then_stop(directory, checkpoint):
            path = saved(directory, checkpoint)
            if stop_itself:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in the loop: the run returns 'interrupted'
            else:
                waiting.touch()
                time.sleep(600)  # killed here with its node
            return path

        checkpointing.save_checkpoint = save_then_stop
        try:
            return real(job)
        finally:
            checkpointing.save_checkpoint = saved  # Ray reuses the worker process for other tasks

    monkeypatch.setattr(executors, "execute", execute_noting_node)
    stopped: list[tuple[str, Any]] = []  # (node id, the node object when it was removed)
    done = threading.Event()

    def stop_the_node_mid_way() -> None:
        by_id = {node.node_id: node for node in nodes}
        while not done.is_set():
            if waiting.exists():
                (marker,) = markers.glob(f"{victim}@*")
                _run_id, node_id, pid, _started = marker.name.split("@")
                assert checkpoint_path(checkpoints, victim).exists()
                os.kill(int(pid), signal.SIGKILL)  # as a machine that dies: its worker, then the node
                cluster.remove_node(by_id[node_id], allow_graceful=False)
                stopped.append((node_id, by_id[node_id]))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=stop_the_node_mid_way, daemon=True)
    if not stop_itself:
        thread.start()
    try:
        report = run_sweep(plan, db, mnist_dir, executor=RayExecutor(cpus_per_run=1), checkpoint_seconds=0)
    finally:
        done.set()
        if thread.is_alive():
            thread.join()
        for _node_id, node in stopped:  # the next tests get a cluster of two task nodes again
            nodes[nodes.index(node)] = cluster.add_node(num_cpus=1, object_store_memory=NODE_MEMORY)
    assert stop_itself or stopped, "the lenet300 run was never seen past a checkpoint"
    assert_each_finished_once(report, plan)
    assert contents(db, timeless) == local_result  # one row per run, no duplicate steps, the same numbers
    ran = [m.name.split("@") for m in markers.glob(f"{victim}@*")]
    assert len(ran) == 2  # started twice: the second time on the other node when the first is gone
    if death == "node":
        nodes_ran = {node_id for _, node_id, _, _ in ran}
        assert len(nodes_ran) == 2 and stopped[0][0] in nodes_ran
    store = ResultStore(db)
    resumed = json.loads(store.run_row(victim)["environment"]).get("resumed")
    store.close()
    assert resumed and resumed[0]["step"] > 0  # continued from the checkpoint the stopped worker left


def test_cli_sweep_on_ray(ray_cluster, tmp_path):
    """`--executor ray --ray-address ADDRESS`: the sweep connects to the cluster itself, and disconnects."""
    import ray

    db = tmp_path / "cli.sqlite"
    address = ray_cluster["cluster"].address
    args = ["sweep", "--methods", "magnitude", "--tasks", "xor", "--iterations", "200", "--eval-every", "100",
            "--db", str(db), "--data-dir", str(tmp_path), "--executor", "ray", "--ray-address", address,
            "--cpus-per-run", "1", "--checkpoint-every", "0"]
    room = int(ray.cluster_resources().get("CPU", 0))  # the task nodes the earlier tests left (one may be lost)
    ray.shutdown()
    before = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(main, args, env={"COLUMNS": "250"})
        assert not ray.is_initialized()
        assert signal.getsignal(signal.SIGTERM) is before  # the sweep gives back the handler ray.init replaced
    finally:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)  # for the other tests
    assert result.exit_code == 0, result.output
    assert "2 run, 0 skipped" in result.output
    # what it waited for, a line each in a log (issue 32): the head runs nothing, each task node one run
    assert f"connecting to Ray at {address}\n" in result.output
    assert f"2 runs with Ray at {address}, room for {room} at once\n" in result.output
    store = ResultStore(db)
    assert [r["status"] for r in store.conn.execute("SELECT status FROM runs")] == ["finished", "finished"]
    store.close()


@pytest.mark.parametrize("runs_per_job", [1, 2])
def test_submitit_local_jobs_fill_the_store_as_this_process_does(runs_per_job, local_result, mnist_dir, timeless,
                                                                 tmp_path):
    pytest.importorskip("submitit")
    db = tmp_path / "submitit.sqlite"
    plan = sweep_plan()
    executor = SubmititExecutor(tmp_path / "jobs", cluster="local", runs_per_job=runs_per_job, time_limit_min=10,
                                poll_seconds=0.2, array_parallelism=1)
    log = io.StringIO()
    report = run_sweep(plan, db, mnist_dir, executor=executor, checkpoint_seconds=0,
                       console=Console(file=log, width=200))
    assert_each_finished_once(report, plan)
    packs = -(-len(plan.runs) // runs_per_job)
    assert f"submitting {packs} jobs to submitit\n" in log.getvalue()  # what it waited for (issue 32)
    assert f"submitit local: 1 jobs running, {packs - 1} waiting for a free slot\n" in log.getvalue()
    assert contents(db, timeless) == local_result
    assert len(list((tmp_path / "jobs").glob("*_submitted.pkl"))) == -(-len(plan.runs) // runs_per_job)


def test_cli_executor_errors(tmp_path, monkeypatch):
    base = ["sweep", "--methods", "dense", "--tasks", "xor", "--db", str(tmp_path / "e.sqlite")]
    result = CliRunner().invoke(main, [*base, "--executor", "ray", "--jobs", "4"])
    assert result.exit_code == 2 and "--jobs is for --executor local; Ray runs as many" in result.output
    assert "--cpus-per-run" in result.output
    result = CliRunner().invoke(main, [*base, "--executor", "ray", "--partition", "gpu"])
    assert result.exit_code == 2 and "--partition applies to --executor submitit, not ray" in result.output
    result = CliRunner().invoke(main, [*base, "--cpus-per-run", "2"])
    assert result.exit_code == 2 and "--cpus-per-run applies to --executor ray or submitit, not local" in result.output
    result = CliRunner().invoke(main, [*base, "--executor", "submitit", "--cpus-per-run", "0.5"])
    assert result.exit_code == 2 and "--cpus-per-run must be a whole number >= 1 for submitit" in result.output

    real = executors.importlib.import_module

    def without_extras(name: str, *args: Any, **kwargs: Any):
        if name in ("ray", "submitit"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(executors.importlib, "import_module", without_extras)
    with pytest.raises(MissingExtraError, match=r"pip install 'prunebench\[slurm\]'"):
        require("submitit")
    for executor, extra in (("ray", "ray"), ("submitit", "slurm")):
        result = CliRunner().invoke(main, [*base, "--executor", executor])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: --executor {executor} needs {executor}: "
                                         f"pip install 'prunebench[{extra}]'")  # one line, no traceback


def xor_record(directory: Path, seed: int = 0):
    spec = make_spec("xor", "dynthresh", seed, iterations=100, eval_every=50)
    recording = RecordingStore()
    harness.train(spec, recording, directory, checkpoints=directory, checkpoint_seconds=None)
    return recording.record(spec.run_id)


def test_apply_twice_is_one_run_and_finished_needs_a_final_row(store, tmp_path):
    record = xor_record(tmp_path)
    store.apply(record)
    store.apply(record)
    count = {t: store.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "trajectory", "final")}
    assert count == {"runs": 1, "trajectory": 2, "final": 1}
    assert store.status(record.run_id) == "finished" and store.final_row(record.run_id)["iterations"] == 100

    other = xor_record(tmp_path, seed=1)
    other.final = None
    with pytest.raises(ValueError, match="marked finished but its record has no final row"):
        store.apply(other)
    assert store.status(other.run_id) is None  # nothing of it was written


def test_a_worker_continues_a_run_another_worker_left(stop_at, timeless, tmp_path):
    args = {"task": "xor", "method": "dynthresh", "seed": 0, "hparams": {}, "iterations": 300, "eval_every": 50,
            "budget": "equal", "protocol": {}}
    spec, request = make_spec(**args), RunRequest(**args)
    straight = execute(RunJob(spec.run_id, "straight", request, str(tmp_path), str(tmp_path / "a"), threads=1,
                              checkpoint_seconds=None))

    shared = tmp_path / "shared"
    with pytest.raises(KeyboardInterrupt):  # the first worker stops at step 180, after the checkpoint at 150
        harness.train(spec, RecordingStore(), tmp_path, checkpoints=shared, observer=stop_at(180), checkpoint_seconds=0)
    job = RunJob(spec.run_id, "continued", request, str(tmp_path), str(shared), threads=1, checkpoint_seconds=0)
    continued = execute(job)  # another worker, with nothing but the shared checkpoint directory

    assert continued.status == "finished"
    assert [r["step"] for r in json.loads(continued.run["environment"])["resumed"]] == [150]
    assert timeless(continued.points) == timeless(straight.points)
    assert [p["step"] for p in continued.points] == [50, 100, 150, 200, 250, 300]
    strip = {k: v for k, v in continued.final.items() if k not in TIMINGS}
    assert strip == {k: v for k, v in straight.final.items() if k not in TIMINGS}
    assert not checkpoint_path(shared, spec.run_id).exists()
    # its record is kept until the driver has stored it: asked again (a retried task), the worker returns it
    assert finished_record_path(shared, spec.run_id).exists()
    assert execute(job).final == continued.final

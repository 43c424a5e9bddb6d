"""One run on two processes (DDP over gloo on this CPU): the same global batches, the same masks on
both ranks, and the one-process result within float tolerance.

Tolerance. Each DDP step averages two half-batch mean gradients; a one-process step takes the mean over
the whole batch. The two agree up to float32 summation order (about 1e-7 relative per step), which over a
few hundred steps can move a weight across its pruning threshold. So we allow the accuracy to differ by
0.2 pp (20 of MNIST's 10,000 test images) and the compression by 1% relative; on this machine they came
out identical for every method except sparse-vd, whose multiplicative noise is drawn per example of the
rank's own half batch (0.07 pp on xor).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunebench import distributed as ddp
from prunebench import harness
from prunebench.data import TensorDataset
from prunebench.observers import Measure
from prunebench.records import RecordingStore
from prunebench.registry import get_method
from prunebench.request import make_spec
from prunebench.sources import ImageAugment, ResidentSource, Shard, _EpochSampler
from prunebench.store import ResultStore

ACCURACY_TOLERANCE = 0.002
COMPRESSION_TOLERANCE = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, runs: list[tuple[str, str, dict, int, int]], data_dir: str,
               out: str) -> None:
    """One rank: train each run under DDP; write (status, accuracy, compression, this rank's own mask
    hash of the final deployed network) per run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = ddp.Context(rank, world, rank, "gloo")
    results = []
    for task, method, hparams, iterations, eval_every in runs:
        spec = make_spec(task, method, 0, hparams, iterations, eval_every)
        store = ResultStore(Path(out) / "ddp.sqlite") if ctx.is_writer else RecordingStore()
        own: list[str] = []

        def own_hash(pruner, model, data, own=own):  # noqa: ARG001 - computed locally, not gathered
            own.append(ddp.mask_hash(pruner.deployed(model)))
            return {}

        try:
            result = harness.train(spec, store, Path(data_dir), device="cpu", observer=Measure(own_hash),
                                   checkpoints=Path(out) / "checkpoints", checkpoint_seconds=None, distributed=ctx)
            results.append([method, result.status, result.final.get("accuracy"), result.final.get("compression"),
                            own[-1]])
        except ValueError as exc:
            results.append([method, "refused", str(exc), None, None])
        store.close()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _two_ranks(runs, data_dir: Path, out: Path) -> tuple[list, list]:
    mp.spawn(_rank_main, args=(2, _free_port(), runs, str(data_dir), str(out)), nprocs=2, join=True)
    return json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text())


def _one_process(task: str, method: str, hparams: dict, iterations: int, eval_every: int, data_dir: Path,
                 out: Path) -> tuple[float, float, str]:
    spec = make_spec(task, method, 0, hparams, iterations, eval_every)
    own: list[str] = []

    def own_hash(pruner, model, data):  # noqa: ARG001
        own.append(ddp.mask_hash(pruner.deployed(model)))
        return {}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = harness.train(spec, ResultStore(out / "one.sqlite"), data_dir, device="cpu",
                               observer=Measure(own_hash), checkpoint_seconds=None)
    finally:
        torch.set_num_threads(threads)
    return result.final["accuracy"], result.final["compression"], own[-1]


def _assert_close(ddp_row: list, single: tuple[float, float, str]) -> None:
    _, status, accuracy, compression, _ = ddp_row
    assert status == "finished"
    assert abs(accuracy - single[0]) <= ACCURACY_TOLERANCE, (ddp_row, single)
    assert abs(compression / single[1] - 1) <= COMPRESSION_TOLERANCE, (ddp_row, single)


@pytest.mark.slow
def test_two_gloo_ranks_of_lenet300_keep_one_mask_and_match_one_process(mnist_dir, tmp_path):
    runs = [("lenet300", "dense", {}, 200, 100), ("lenet300", "dynthresh", {}, 200, 100)]
    rank0, rank1 = _two_ranks(runs, mnist_dir, tmp_path)
    assert [r[4] for r in rank0] == [r[4] for r in rank1]  # each rank's own hash of its deployed network
    assert [r[1:4] for r in rank0] == [r[1:4] for r in rank1]
    for row, (task, method, hp, iterations, eval_every) in zip(rank0, runs, strict=True):
        _assert_close(row, _one_process(task, method, hp, iterations, eval_every, mnist_dir, tmp_path))
    store = ResultStore(tmp_path / "ddp.sqlite")  # rank 0 alone wrote: one row per run, none from rank 1
    rows = store.conn.execute("SELECT run_id, status, environment FROM runs").fetchall()
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    assert all(json.loads(r["environment"])["distributed"] == {"world_size": 2, "backend": "gloo"} for r in rows)
    store.close()


@pytest.mark.slow
def test_every_method_runs_on_two_ranks_with_one_mask_or_refuses(xor_methods, tmp_path):
    """Every registered method: those that declare a `ddp_refusal` refuse; every other one runs, on both
    ranks with one mask, within tolerance of one process."""
    runs = [("xor", method, hp, 300, 100) for method, hp in xor_methods.items()]
    rank0, rank1 = _two_ranks(runs, tmp_path, tmp_path)
    assert rank0 == rank1
    refusing = {method for method in xor_methods if get_method(method).ddp_refusal}
    assert [row[0] for row in rank0 if row[1] == "refused"] == [m for m in xor_methods if m in refusing], rank0
    for row, (task, method, hp, iterations, eval_every) in zip(rank0, runs, strict=True):
        if method in refusing:
            assert "does not run on several processes" in row[2]
            continue
        # xor's 10,000 test points: the same tolerance in points
        _assert_close(row, _one_process(task, method, hp, iterations, eval_every, tmp_path, tmp_path))


@pytest.mark.slow
def test_torchrun_runs_the_issue_command_into_one_stored_run(mnist_dir, tmp_path):
    db = tmp_path / "runs.sqlite"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "prunebench", "run",
               "--method", "dynthresh", "--task", "lenet300", "--iterations", "200", "--eval-every", "100",
               "--db", str(db), "--data-dir", str(mnist_dir), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["status"] == "finished"  # rank 0 alone reports
    store = ResultStore(db)
    runs = store.conn.execute("SELECT run_id, status FROM runs").fetchall()
    assert [tuple(r) for r in runs] == [(printed[0]["run_id"], "finished")]
    points = store.trajectory(printed[0]["run_id"])
    assert [p["step"] for p in points] == [100, 200]
    assert all(len(json.loads(p["extra"])["mask_hash"]) == 16 for p in points)
    store.close()
    assert not list((tmp_path / "runs.checkpoints").glob("*.pt"))


def test_masks_that_drift_apart_fail_the_run():
    class Disagreeing(ddp.Context):
        def gather(self, value):
            return [value, "0" * 16]

    with pytest.raises(ddp.MaskDriftError, match="masks differ"):
        ddp.check_masks_agree(Disagreeing(0, 2), torch.nn.Linear(2, 2))
    assert ddp.check_masks_agree(ddp.SINGLE, torch.nn.Linear(2, 2))


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="does not split evenly across 3 processes"):
        ddp.Context(0, 3).local_batch(100)
    assert ddp.Context(1, 4).local_batch(128) == 32


def test_shards_of_a_resident_batch_are_the_one_process_batch_with_its_augmentation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    data = TensorDataset(x, torch.arange(64), x[:8], torch.arange(8))
    augment = ImageAugment(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), pad=2)
    cpu = torch.device("cpu")
    whole = ResidentSource(data, 16, 3, cpu, augment=augment)
    halves = [ResidentSource(data, 16, 3, cpu, augment=augment, shard=Shard(r, 2)) for r in range(2)]
    for _ in range(6):  # across an epoch boundary (64 / 16 = 4 batches)
        xb, yb = whole.next_batch()
        parts = [h.next_batch() for h in halves]
        assert torch.equal(torch.cat([p[1] for p in parts]), yb)
        assert torch.equal(torch.cat([p[0] for p in parts]), xb)


def test_shards_of_a_streamed_epoch_are_the_global_batches():
    whole = [i for i, _ in _EpochSampler(103, 5, 2, 20)]
    shards = [[i for i, _ in _EpochSampler(103, 5, 2, 20, batch_size=10, shard=Shard(r, 2))] for r in range(2)]
    assert len(shards[0]) == len(_EpochSampler(103, 5, 2, 20, 10, Shard(0, 2))) == 40  # 8 full global batches
    for b in range(8):
        assert shards[0][5 * b:5 * b + 5] + shards[1][5 * b:5 * b + 5] == whole[10 * b:10 * b + 10]

"""The one training loop every method runs through; it, not the method, measures the deployed network."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunebench import distributed as ddp
from prunebench.checkpoint import (
    Checkpoint,
    checkpoint_dir,
    delete_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from prunebench.data import TensorDataset
from prunebench.deploy import save_deployed
from prunebench.environment import environment, pick_device
from prunebench.metrics import (
    accuracy_at_compressions,
    count_flops,
    evaluate_batches,
    measure_compression,
    threshold_distribution,
)
from prunebench.protocol import Protocol
from prunebench.pruner import Pruner
from prunebench.records import RecordingStore, snapshot
from prunebench.registry import get_method
from prunebench.request import RunSpec, check_phases
from prunebench.sources import DataSource, Shard
from prunebench.store import ResultStore
from prunebench.tasks import Task

SMALL_MODEL_PARAMS = 10_000
#: Wall-clock between checkpoints (taken at evaluations): a stop loses at most this much work plus one eval_every.
CHECKPOINT_SECONDS = 60.0


class RunInterrupted(KeyboardInterrupt):
    """Raised inside the training loop on SIGTERM (Ctrl-C raises KeyboardInterrupt itself)."""


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int) -> None:
        super().__init__(f"loss became NaN or infinite at step {step}")
        self.step = step


@dataclass
class RunResult:
    run_id: str
    status: str
    spec: RunSpec
    final: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    failed_step: int | None = None
    skipped: bool = False

    def as_json(self) -> dict[str, Any]:
        f = self.final
        return {
            "run_id": self.run_id, "status": self.status, "method": self.spec.method,
            "task": self.spec.task.name, "seed": self.spec.seed, "budget": self.spec.budget,
            "accuracy": f.get("accuracy"), "compression": f.get("compression"),
            "nonzero": f.get("weights_nonzero"), "weights_total": f.get("weights_total"),
            "compression_all": f.get("compression_all"), "train_seconds": f.get("train_seconds"),
            "eval_seconds": f.get("eval_seconds"), "iterations": f.get("iterations"),
            "per_layer": f.get("per_layer"), "hparams": self.spec.hparams.as_dict(),
            "error": self.error, "failed_step": self.failed_step, "skipped": self.skipped,
        }


class Observer:
    """Receives progress from the harness (the CLI's rich progress bar implements it)."""

    def start(self, spec: RunSpec, total_steps: int) -> None: ...
    def resumed(self, step: int) -> None: ...
    def step(self, step: int) -> None: ...
    def evaluation(self, point: dict[str, Any]) -> None: ...
    def end(self) -> None: ...


class Observers(Observer):
    """Several observers as one (the harness takes one), called in order; None entries are left out."""

    def __init__(self, *observers: Observer | None) -> None:
        self.observers = [o for o in observers if o is not None]

    def start(self, spec: RunSpec, total_steps: int) -> None:
        for o in self.observers:
            o.start(spec, total_steps)

    def resumed(self, step: int) -> None:
        for o in self.observers:
            o.resumed(step)

    def step(self, step: int) -> None:
        for o in self.observers:
            o.step(step)

    def evaluation(self, point: dict[str, Any]) -> None:
        for o in self.observers:
            o.evaluation(point)

    def end(self) -> None:
        for o in self.observers:
            o.end()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SigtermToInterrupt:
    """Within the block, SIGTERM raises RunInterrupted in the main thread (so the run is stored, or a sweep
    driver stops its workers as on Ctrl-C)."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):  # noqa: ARG001
                raise RunInterrupted("SIGTERM")
            self.previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def default_workers(device: torch.device) -> int:
    """DataLoader workers for streamed data: $PRUNEBENCH_WORKERS, else up to 8 on CUDA and none on CPU
    (there the training itself already uses the cores)."""
    env = os.environ.get("PRUNEBENCH_WORKERS")
    if env is not None:
        return max(0, int(env))
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def check_device_options(protocol: Protocol, device: torch.device) -> None:
    """bf16 autocast and channels_last are CUDA options; on CPU they are refused, not silently dropped."""
    if device.type != "cuda" and (protocol.autocast != "off" or protocol.channels_last):
        raise ValueError(f"--autocast {protocol.autocast} / --channels-last apply on CUDA only; this run is on "
                         f"{device.type}")


def training_step(forward: Callable[[torch.Tensor], torch.Tensor], task: Task, pruner: Pruner,
                  optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int,
                  autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of a method: the task's loss (bf16 autocast on CUDA when asked) plus the method's
    penalty, backward, step, then the method's `after_step(step)`. Returns (task loss, loss with penalty),
    not detached and not synchronised. The one definition of a step: `train`, the throughput benchmarks and
    the large-task tests all call it."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = task.loss(forward(x), y)
    penalty = pruner.penalty()
    total = loss if penalty is None else loss + penalty
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    pruner.after_step(step)
    return loss, total


@dataclass(frozen=True)
class TrainOptions:
    """Where and how one run trains; none of it is part of the run's identity.

    `device`: cpu, cuda or cuda:N (default: CUDA when present). `force`: start again even if finished.
    `resume`: continue a stopped run from its checkpoint. `checkpoint_seconds`: wall-clock between
    checkpoints (0: every evaluation; None: never), kept in `checkpoints` (default: beside the store).
    `workers`: DataLoader workers for streamed data. `allow_unverified_data`: accept files that fail their
    checksums (recorded). `at_compressions`: also evaluate the trained weights cut to these compressions.
    `record_thresholds`: store every weight and its learned threshold at each evaluation (DT Fig. 4).
    `distributed`: this process's rank in a DDP run. `save_model`: where the writer keeps the deployed
    network once the run finished."""

    device: str | torch.device | None = None
    force: bool = False
    resume: bool = True
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS
    checkpoints: Path | None = None
    workers: int | None = None
    allow_unverified_data: bool = False
    at_compressions: tuple[float, ...] = ()
    record_thresholds: bool = False
    distributed: ddp.Context | None = None
    save_model: Path | None = None


def train(spec: RunSpec, store: ResultStore | RecordingStore, data_dir: Path, options: TrainOptions | None = None,
          observer: Observer | None = None, dataset: TensorDataset | None = None,
          evaluate_extra: Callable[[Pruner, torch.nn.Module, TensorDataset], dict] | None = None,
          **overrides: Any) -> RunResult:
    """Train one run and store it. A run whose identity already finished is skipped unless `force`.

    At an evaluation, once `checkpoint_seconds` of wall-clock have passed since the last checkpoint
    (0: at every evaluation; None: never), the run is checkpointed into `checkpoints` (default: beside
    the store; `prunebench.checkpoint`). A run that stopped (interrupted, or killed while 'running') continues
    from its checkpoint when `resume`, bit for bit as if it had not stopped; its stored points after
    the checkpoint are evaluated again, and `train_seconds` counts the steps of the final network only.
    `force` starts from scratch.

    The task's data comes through its `DataSource` (resident tensors, or streamed by `workers` loader
    processes; default `default_workers`). `allow_unverified_data` accepts files that fail their
    published checksums; the run then records `"unverified_data": true` in its environment and
    leaderboards mark it. `dataset` (tests) replaces the task's resident data.

    `evaluate_extra(pruner, model, data)` (resident data only) and, for each ratio in `at_compressions`,
    the accuracy of the trained weights cut to exactly that compression by the method's `scores`
    ("at_compression") are stored in each evaluation's `extra`, as is the distribution of the method's
    learned thresholds (`Pruner.thresholds`, "thresholds"). All are evaluation-only: not part of the
    identity.

    `distributed`: this process's rank in a DDP run (`prunebench.distributed`; default: one process).
    Every rank calls `train` with the same spec; rank 0 passes the real store, the others a
    `RecordingStore`. Rank 0's store decides whether the run is skipped, resumed or started.

    `save_model`: where the writer keeps the deployed network once the run finished (`prunebench.deploy`;
    nothing is written for a run skipped, failed or interrupted)."""
    opts = dataclasses.replace(options or TrainOptions(), **overrides)
    device, force, resume = opts.device, opts.force, opts.resume
    checkpoint_seconds, checkpoints, workers = opts.checkpoint_seconds, opts.checkpoints, opts.workers
    allow_unverified_data, at_compressions = opts.allow_unverified_data, opts.at_compressions
    distributed = opts.distributed
    save_model = opts.save_model
    if opts.record_thresholds:
        from prunebench.report.fig4 import record_thresholds
        evaluate_extra = record_thresholds
    observer = observer or Observer()
    ctx = distributed or ddp.SINGLE
    run_id, identity = spec.identity
    if checkpoints is None:
        if not isinstance(store, ResultStore):
            raise ValueError("a run recorded in memory needs a checkpoint directory")
        checkpoints = checkpoint_dir(store.path)
    status = ctx.broadcast(store.status(run_id) if ctx.is_writer else None)
    if not force and status == "finished":
        return RunResult(run_id, "finished", spec, store.final_row(run_id) or {}, skipped=True)
    checkpoint = None
    if resume and not force and status in ("interrupted", "running"):
        checkpoint = load_checkpoint(checkpoints, run_id)
    if checkpoint is None and ctx.is_writer:
        delete_checkpoint(checkpoints, run_id)

    device = pick_device(str(device) if device is not None else None)
    task, protocol = spec.task, spec.protocol
    check_device_options(protocol, device)
    if ctx.active:
        ctx.local_batch(protocol.batch_size)  # raises when the batch does not split evenly
        refusal = get_method(spec.method).ddp_refusal
        if refusal:
            raise ValueError(f"{spec.method} does not run on several processes: {refusal}")
    unverified = not task.verified(Path(data_dir))
    source: DataSource = task.make_source(
        Path(data_dir), protocol.batch_size, spec.seed, device, allow_unverified=allow_unverified_data,
        dataset=dataset, workers=default_workers(device) if workers is None else workers,
        shard=Shard(ctx.rank, ctx.world_size))
    if evaluate_extra is not None and source.resident is None:
        raise ValueError(f"evaluation extras need resident data; {task.name} streams its data")
    channels_last = protocol.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    pruner = get_method(spec.method)(spec.hparams, task, spec.budget)
    model = pruner.attach(task.build_model(spec.seed, protocol)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    phases = pruner.phases(protocol)
    total_steps = check_phases(phases, protocol, spec.method, spec.budget)
    # The dense architecture every deployed network is measured against (totals, reference FLOPs).
    reference = task.architecture().to(device)
    example = source.example
    flops_reference = count_flops(reference, example).dense
    schedule = [[p.name, p.iterations, p.lr] for p in phases]
    if checkpoint is not None and checkpoint.phases != schedule:
        checkpoint = None  # the method's schedule changed since (new code): start again
        if ctx.is_writer:
            delete_checkpoint(checkpoints, run_id)
    ctx.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    if checkpoint is not None and not ctx.is_writer and isinstance(store, RecordingStore):
        store.restore(checkpoint.record or {"run": {"run_id": run_id, "environment": "{}"}, "points": []})

    def run_environment() -> dict[str, Any]:
        env: dict[str, Any] = environment(device)
        if unverified:
            env["unverified_data"] = True
        if channels_last or protocol.autocast != "off":
            env["device_options"] = {"autocast": protocol.autocast, "channels_last": channels_last}
        if ctx.active:
            env["distributed"] = ctx.describe()
        return env

    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    train_seconds = eval_seconds = 0.0
    step, steps_since, last_point = 0, 0, None
    start_phase, start_phase_steps = 0, 0
    if checkpoint is None:
        store.start_run(run_id, task=task.name, method=spec.method, seed=spec.seed, budget=spec.budget,
                        identity=identity, hparams=spec.hparams.as_dict(), protocol=protocol.__dict__,
                        environment=run_environment())
    else:
        model.load_state_dict(checkpoint.model)
        pruner.load_state_dict(checkpoint.pruner)
        source.load_state_dict(checkpoint.rng["data"])
        torch.set_rng_state(checkpoint.rng["torch"])
        if device.type == "cuda" and checkpoint.rng["cuda"] is not None:
            torch.cuda.set_rng_state(checkpoint.rng["cuda"], device)
        counters = checkpoint.counters
        train_seconds, eval_seconds = counters["train_seconds"], counters["eval_seconds"]
        last_point = counters["last_point"]
        step, start_phase, start_phase_steps = checkpoint.step, checkpoint.phase_index, checkpoint.phase_steps
        store.resume_run(run_id, step, run_environment())
    last_saved = time.perf_counter()

    def save(phase_index: int, phase_steps: int, optimizer: torch.optim.Optimizer) -> None:
        nonlocal last_saved
        if not ctx.is_writer or checkpoint_seconds is None or time.perf_counter() - last_saved < checkpoint_seconds:
            return
        rng = {"torch": torch.get_rng_state(), "data": source.state_dict(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        counters = {"train_seconds": train_seconds, "eval_seconds": eval_seconds, "last_point": last_point}
        save_checkpoint(checkpoints, Checkpoint(run_id, step, phase_index, phase_steps, model.state_dict(),
                                                optimizer.state_dict(), pruner.state_dict(), rng, counters,
                                                # the record so far, for a worker (RecordingStore) or another
                                                # rank that continues this run without this store; a SQLite
                                                # read per checkpoint (every checkpoint_seconds)
                                                schedule, snapshot(store, run_id)))
        last_saved = time.perf_counter()

    def accuracy(net: torch.nn.Module) -> tuple[float, float | None]:
        return evaluate_batches(net, source.eval_batches(), task.correct, top5=task.top5,
                                autocast=protocol.autocast if device.type == "cuda" else "off")

    def evaluate(phase_name: str, steps_since: int) -> dict[str, Any]:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        bad = int(ctx.maximum(first_bad.clone()).item())
        if bad >= 0:
            raise NonFiniteLoss(bad)
        ctx.mean(loss_sum)  # the loss over the global batch
        net = pruner.deployed(model)
        mask = ddp.check_masks_agree(ctx, net) if ctx.active else None
        counts = measure_compression(net, reference)
        flops = count_flops(net, example)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        top1, top5 = accuracy(net)
        point = {
            "step": step, "phase": phase_name, "train_seconds": train_seconds,
            "loss": float(loss_sum.item()) / max(steps_since, 1),
            "accuracy": top1,
            "compression": counts.compression, "weights_nonzero": counts.weights_nonzero,
            "weights_total": counts.weights_total, "compression_all": counts.compression_all,
            "per_layer": counts.per_layer, "flops": flops.dense, "flops_nonzero": flops.nonzero,
        }
        if top5 is not None:
            point["top5"] = top5
        if pruner.trained_network_differs:
            point["trained_accuracy"] = accuracy(model)[0]
        extra = {}
        if at_compressions:
            at = accuracy_at_compressions(pruner, model, lambda n: accuracy(n)[0], at_compressions)
            if at is not None:
                extra["at_compression"] = at
        thresholds = pruner.thresholds(model)
        if thresholds is not None:
            extra["thresholds"] = threshold_distribution(thresholds)
        if evaluate_extra is not None:
            extra.update(evaluate_extra(pruner, model, source.resident))
        if mask is not None:
            extra["mask_hash"] = mask  # the same on every rank (checked)
        if extra:
            point["extra"] = extra
        _sync(device)
        eval_seconds += time.perf_counter() - t0
        point["eval_seconds"] = eval_seconds
        store.add_point(run_id, point)
        observer.evaluation(point)
        return {**point, "params_nonzero": counts.params_nonzero, "params_total": counts.params_total}

    def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
        """The protocol's schedule on top of each group's lr at the phase start ("initial_lr", which
        torch's own schedulers use too and which the optimizer's state_dict keeps across a resume)."""
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

    observer.start(spec, total_steps)
    if step:
        observer.resumed(step)
    threads = torch.get_num_threads()
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)  # tiny tensors: thread start-up costs more than it saves
    scheduled = bool(protocol.lr_milestones)
    autocast = protocol.autocast == "bf16" and device.type == "cuda"
    try:
        with SigtermToInterrupt():
            model.train()
            for phase_index, phase in enumerate(phases):
                if phase_index < start_phase:
                    continue
                optimizer = protocol.make_optimizer(model.parameters(), lr=phase.lr)
                phase_steps = 0
                if checkpoint is not None and phase_index == start_phase:
                    pruner.on_resume(phase, model, optimizer)
                    optimizer.load_state_dict(checkpoint.optimizer)
                    phase_steps = start_phase_steps
                    checkpoint = None
                else:
                    pruner.on_phase_start(phase, model, optimizer)
                    steps_since = 0
                forward = ddp.wrap(model, ctx, device)  # after the phase start: it may change the parameters
                factor = None
                _sync(device)
                t0 = time.perf_counter()
                while phase_steps < phase.iterations:
                    step += 1
                    phase_steps += 1
                    if scheduled and (now := protocol.lr_factor(step)) != factor:
                        factor = now
                        set_lr(optimizer, factor)
                    x, y = source.next_batch()
                    if channels_last:
                        x = x.contiguous(memory_format=memory_format)
                    loss, total = training_step(forward, task, pruner, optimizer, x, y, step, autocast=autocast)
                    detached = total.detach()
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(detached),
                                            torch.tensor(step, device=device), first_bad)
                    loss_sum += loss.detach()
                    steps_since += 1
                    observer.step(step)
                    if step % protocol.eval_every == 0 or step == total_steps:
                        _sync(device)
                        train_seconds += time.perf_counter() - t0
                        last_point = evaluate(phase.name, steps_since)
                        loss_sum.zero_()
                        steps_since = 0
                        if step < total_steps:
                            save(phase_index, phase_steps, optimizer)
                        t0 = time.perf_counter()
                _sync(device)
                train_seconds += time.perf_counter() - t0
    except NonFiniteLoss as exc:
        store.mark(run_id, "failed", str(exc), exc.step)
        if ctx.is_writer:
            delete_checkpoint(checkpoints, run_id)
        observer.end()
        return RunResult(run_id, "failed", spec, error=str(exc), failed_step=exc.step)
    except KeyboardInterrupt as exc:
        store.mark(run_id, "interrupted", f"interrupted at step {step} ({type(exc).__name__})", step)
        observer.end()
        raise
    except Exception as exc:
        store.mark(run_id, "failed", f"{type(exc).__name__}: {exc}", step)
        observer.end()
        raise
    finally:
        torch.set_num_threads(threads)
    observer.end()
    assert last_point is not None
    final = {
        "iterations": step, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        **{k: last_point[k] for k in ("accuracy", "compression", "weights_nonzero", "weights_total",
                                       "compression_all", "params_nonzero", "params_total", "per_layer",
                                       "flops", "flops_nonzero")},
        "flops_reference": flops_reference,
    }
    if "top5" in last_point:
        final["top5"] = last_point["top5"]
    if "extra" in last_point:
        final["extra"] = last_point["extra"]
    store.finish(run_id, final)
    if ctx.is_writer:
        delete_checkpoint(checkpoints, run_id)
        if save_model is not None:
            save_deployed(save_model, pruner.deployed(model), run_id=run_id, task=task.name, method=spec.method,
                          seed=spec.seed, architecture=task.architecture, final=final)
    return RunResult(run_id, "finished", spec, final)

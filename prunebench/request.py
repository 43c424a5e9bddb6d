"""What to train: a `RunRequest` (names, seed, overrides: cheap, picklable, with its identity and the
command line that reruns it) and the `RunSpec` it resolves to (task, method with validated hyperparameters,
protocol, seed)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
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
                      "batch_size": "--batch-size", "autocast": "--autocast", "channels_last": "--channels-last"}


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


def _pairs(values: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(values.items() if isinstance(values, Mapping) else (values or ()))


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
    hparams: tuple[tuple[str, Any], ...] = field(default=())
    iterations: int | None = None
    eval_every: int | None = None
    budget: str = "equal"
    protocol: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", _pairs(self.hparams))
        object.__setattr__(self, "protocol", _pairs(self.protocol))

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
        `seeds`, the `prunebench sweep` command of those seeds (protocol flags sorted, hyperparameters as
        --grid, eval_every only where it differs from the task's; protocol fields without a flag left out:
        `command` notes them)."""
        if seeds is None:
            args = ["prunebench", "run", "--method", self.method, "--task", self.task, "--seed", str(self.seed)]
            args += ["--budget", self.budget] if self.budget != "equal" else []
            args += ["--iterations", str(self.iterations)] if self.iterations is not None else []
            args += ["--eval-every", str(self.eval_every)] if self.eval_every is not None else []
            args += [a for k, v in self.protocol for a in (CLI_PROTOCOL_FLAGS[k], format_value(v))]
            args += [a for k, v in self.hparams for a in (f"--{k.replace('_', '-')}", format_value(v))]
            return args + list(options)
        args = ["prunebench", "sweep", "--methods", self.method, "--tasks", self.task, "--seeds", format_seeds(seeds)]
        args += ["--budget", self.budget] if self.budget != "equal" else []
        protocol = dict(self.protocol, **({"iterations": self.iterations} if self.iterations is not None else {}))
        args += [a for k, v in sorted(protocol.items()) if k in CLI_PROTOCOL_FLAGS
                 for a in (CLI_PROTOCOL_FLAGS[k], format_value(v))]
        try:
            task_eval_every = get_task(self.task).protocol.eval_every
        except KeyError:
            task_eval_every = None
        if self.eval_every is not None and self.eval_every != task_eval_every:
            args += ["--eval-every", str(int(self.eval_every))]
        args += [a for k, v in sorted(self.hparams) for a in ("--grid", f"{k}={format_value(v)}")]
        return args + list(options)

    def command(self, *options: str, seeds: Iterable[int] | None = None) -> str:
        """`argv` as one shell line; protocol fields without a flag follow as a comment."""
        line = shlex.join(self.argv(*options, seeds=seeds))
        other = sorted((k, v) for k, v in self.protocol if k not in CLI_PROTOCOL_FLAGS)
        if other:
            line += "  # protocol differs from the task's and has no CLI flag: " + " ".join(
                f"{k}={format_value(v)}" for k, v in other)
        return line


def format_seeds(seeds: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the inverse of `report.setting.parse_seeds` for sorted lists)."""
    values = sorted(set(int(s) for s in seeds))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


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

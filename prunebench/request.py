"""What to train, resolved: the task, the method with its validated hyperparameters, the protocol, the seed."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from prunebench.protocol import Phase, Protocol
from prunebench.pruner import BUDGETS, Hyperparameters, make_hparams
from prunebench.registry import get_method, get_task
from prunebench.store import run_identity
from prunebench.tasks import Task


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


def make_spec(task: str, method: str, seed: int = 0, hparams: dict[str, Any] | None = None,
              iterations: int | None = None, eval_every: int | None = None, budget: str = "equal", *,
              protocol: dict[str, Any] | None = None) -> RunSpec:
    """Resolve names and overrides into a validated `RunSpec` (raises KeyError/ValueError on bad input).

    `protocol` overrides further fields of the task's protocol (optimizer, lr, momentum, weight_decay);
    a run under another protocol is another identity, and its accuracy loss is counted against the
    `dense` run of that same protocol."""
    task_obj = get_task(task)
    cls = get_method(method)
    unknown = sorted(set(protocol or {}) - {f.name for f in fields(Protocol)})
    if unknown:
        raise ValueError(f"unknown protocol field(s): {', '.join(unknown)}")
    overrides = dict(protocol or {})
    base = task_obj.protocol
    batch = overrides.get("batch_size")
    if batch is not None and base.steps_per_epoch and batch != base.batch_size:
        # An epoch is a pass over the task's real training set: its steps follow the batch size, and so
        # do a budget in epochs and the schedule's milestones.
        per_epoch = max(1, task_obj.train_size // batch)
        eval_each = per_epoch if base.eval_every == base.steps_per_epoch else base.eval_every
        base = base.with_overrides(batch_size=batch, steps_per_epoch=per_epoch, eval_every=eval_each)
        if base.epochs is not None:
            base = base.with_overrides(epochs=base.epochs)
    protocol_obj = base.with_overrides(iterations=iterations, eval_every=eval_every, **overrides)
    protocol_obj.validate()
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}; got {budget!r}")
    hp = make_hparams(cls, task_obj, hparams)
    # Dry attach on a throwaway model: configuration that depends on the architecture (per-layer
    # values of the wrong length, phases that do not fit the budget) fails here, before any training.
    dry = cls(hp, task_obj, budget)
    dry.attach(task_obj.architecture())
    check_phases(dry.phases(protocol_obj), protocol_obj, method, budget)
    return RunSpec(task_obj, method, hp, protocol_obj, seed, budget)


def check_phases(phases: list[Phase], protocol: Protocol, method: str, budget: str) -> int:
    total = sum(p.iterations for p in phases)
    if budget == "equal" and total != protocol.iterations:
        raise ValueError(f"{method} declares {total} iterations under budget 'equal'; "
                         f"the protocol has {protocol.iterations}")
    return total

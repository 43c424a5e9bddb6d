"""Names for groups of runs: the "setting" (what distinguishes a group besides method, task, budget and
seed), seed lists, and the command that reruns a group."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from prunebench.protocol import Protocol
from prunebench.pruner import _field_default, make_hparams
from prunebench.registry import get_method, get_task
from prunebench.request import RunRequest, format_value
from prunebench.store import _canonical, protocol_non_default


def parse_seeds(text: str) -> list[int]:
    """'0-2' -> [0, 1, 2]; '0,3,5' -> [0, 3, 5]; '0-2,7' -> [0, 1, 2, 7] (order kept, duplicates dropped)."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"bad seed list {text!r}: use e.g. '0-2' or '0,1,5'")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range {part!r}: the end is below the start")
        seeds.extend(s for s in range(lo, hi + 1) if s not in seeds)
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def _full(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    return {**_canonical(defaults), **_canonical(overrides)}


def setting_items(task: str, method: str, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hyperparameters, protocol fields) in which a run differs from the task's calibrated defaults.

    The identity stores values that differ from the *dataclass* defaults; the setting is relative
    to what `prunebench run --method M --task T` would use today (the task's calibrated defaults),
    so the default configuration reads "default" and a grid value reads as the flag that set it.
    A method or task that is no longer registered falls back to the identity's own values."""
    hp_id = identity.get("hparams") or {}
    try:
        cls = get_method(method)
        task_obj = get_task(task)
        base = {f.name: _field_default(f) for f in dataclasses.fields(cls.hparams_class)}
        run_hp = _full(base, hp_id)
        calibrated = _full(base, make_hparams(cls, task_obj).non_default())
        hparams = {k: v for k, v in run_hp.items() if v != calibrated.get(k)}
        task_proto = protocol_non_default(task_obj.protocol)
    except (KeyError, ValueError):
        hparams = _canonical(hp_id)
        task_proto = {}
    proto_base = {f.name: getattr(Protocol(), f.name) for f in dataclasses.fields(Protocol) if f.name != "eval_every"}
    run_proto = _full(proto_base, identity.get("protocol") or {})
    task_full = _full(proto_base, task_proto)
    protocol = {k: v for k, v in run_proto.items() if v != task_full.get(k)}
    return hparams, protocol


def setting_string(hparams: dict[str, Any], protocol: dict[str, Any]) -> str:
    """'lam=0.0003 tau=0.1' (protocol fields after the hyperparameters), or 'default'."""
    items = [f"{k}={format_value(v)}" for k, v in sorted(hparams.items())]
    items += [f"{k}={format_value(v)}" for k, v in sorted(protocol.items())]
    return " ".join(items) or "default"


def rerun_command(task: str, method: str, seeds: Iterable[int], budget: str, hparams: dict[str, Any],
                  protocol: dict[str, Any], db: str | None = None, eval_every: int | None = None) -> str:
    """The `prunebench sweep` command that reproduces a group of runs (same identities; `RunRequest.command`).
    `eval_every` is not part of the identity, but it sets the trajectory's resolution (time to a
    compression), so it is given when it differs from the task's."""
    protocol = dict(protocol)
    request = RunRequest(task, method, 0, hparams, protocol.pop("iterations", None), eval_every, budget, protocol)
    return request.command(*(["--db", str(db)] if db else []), seeds=seeds)

"""Methods and tasks from other installed packages, found through entry points.

A package adds a method or a task by declaring, in its `pyproject.toml`:

    [project.entry-points."prunebench.methods"]
    random = "my_package.random_pruning:RandomPruning"   # a `Pruner` subclass

    [project.entry-points."prunebench.tasks"]
    mnist-mlp = "my_package.tasks:mnist_mlp"             # a `Task`, or a function returning one

The entry point's name is the name users type (`--method random`). A plugin then works in `run`,
`sweep`, `leaderboard`, `plot` and `check` like a built-in: the registries are filled here, before any
command reads them, in the driver and in every worker process alike. A plugin that fails to load (its
import raises, it names a built-in, it is not a `Pruner` or `Task`) is listed as broken by `prunebench
list`, with its error on one line, and everything else still works. `examples/prunebench-example-plugin`
is a complete plugin package.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

METHOD_GROUP = "prunebench.methods"
TASK_GROUP = "prunebench.tasks"


@dataclass(frozen=True)
class Plugin:
    """One entry point: its group, its name, the distribution that declares it, and its error if broken."""

    group: str
    name: str
    value: str
    distribution: str
    error: str | None = None


#: Every plugin entry point seen, loaded or broken, in discovery order.
PLUGINS: list[Plugin] = []
_loaded = False


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _add_method(ep: EntryPoint) -> None:
    from prunebench.pruner import REGISTRY, Pruner, register

    obj = ep.load()
    if not (isinstance(obj, type) and issubclass(obj, Pruner)):
        raise TypeError(f"{ep.value} is not a prunebench.pruner.Pruner subclass")
    if ep.name in REGISTRY and REGISTRY[ep.name] is not obj:
        raise ValueError(f"method name {ep.name!r} is taken (built-in or another plugin)")
    if obj.name and obj.name != ep.name:
        raise ValueError(f"{ep.value} registered itself as {obj.name!r}, but its entry point is named {ep.name!r}")
    register(ep.name)(obj)


def _add_task(ep: EntryPoint) -> None:
    from prunebench.tasks import TASKS, Task

    obj = ep.load()
    task = obj if isinstance(obj, Task) else obj() if callable(obj) else obj
    if not isinstance(task, Task):
        raise TypeError(f"{ep.value} is neither a prunebench.tasks.Task nor a function returning one")
    if task.name != ep.name:
        raise ValueError(f"{ep.value} builds task {task.name!r}, but its entry point is named {ep.name!r}")
    if ep.name in TASKS and TASKS[ep.name] is not task:
        raise ValueError(f"task name {ep.name!r} is taken (built-in or another plugin)")
    TASKS[ep.name] = task


def load_plugins() -> list[Plugin]:
    """Load every installed plugin once per process (later calls return the same list)."""
    global _loaded
    if _loaded:
        return PLUGINS
    _loaded = True  # first, so that a plugin importing prunebench's registries does not recurse here
    for group, add in ((METHOD_GROUP, _add_method), (TASK_GROUP, _add_task)):
        for ep in sorted(entry_points(group=group), key=lambda e: e.name):
            error = None
            try:
                add(ep)
            except Exception as exc:  # noqa: BLE001 - any failure of third-party code marks that plugin broken
                error = _one_line(exc)
            PLUGINS.append(Plugin(group, ep.name, ep.value, _distribution(ep), error))
    return PLUGINS


def broken() -> list[Plugin]:
    """The plugins that failed to load."""
    return [p for p in load_plugins() if p.error is not None]


def origin(group: str, name: str) -> str | None:
    """The distribution that provides a loaded plugin method or task; None for a built-in."""
    for p in load_plugins():
        if p.group == group and p.name == name and p.error is None:
            return p.distribution
    return None

"""Methods and tasks by name: the built-ins and those of installed plugin packages.

The one place that knows every method and task. It sits above `pruner`, `tasks`, `methods` and `plugins`
(none of which imports it), so looking a name up never closes an import cycle. Plugins are loaded once
per process before the first lookup, in the driver and in every worker alike (`prunebench.plugins`)."""

from __future__ import annotations

from prunebench.plugins import load_plugins
from prunebench.pruner import REGISTRY, Pruner
from prunebench.tasks import TASKS, Task


def _load() -> None:
    import prunebench.methods  # noqa: F401  (importing the package registers every built-in method)

    load_plugins()


def method_names() -> list[str]:
    """Every method name, built-in and plugin, sorted."""
    _load()
    return sorted(REGISTRY)


def get_method(name: str) -> type[Pruner]:
    """The `Pruner` subclass registered under `name` (KeyError naming the choices otherwise)."""
    _load()
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; choose from: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def task_names() -> list[str]:
    """Built-in tasks in definition order, then those of installed plugin packages."""
    _load()
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task named `name` (KeyError naming the choices otherwise)."""
    if name not in task_names():
        raise KeyError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
    return TASKS[name]

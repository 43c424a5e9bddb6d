"""Pruning methods, one module each; importing this package registers them all.

Installed as `prunebench.methods` (see pyproject.toml), never as a top-level `methods` package."""

from prunebench.methods import dense, dynthresh  # noqa: F401

__all__ = ["dense", "dynthresh"]

"""Pruning methods, one module each; importing this package registers them all.

Installed as `prunebench.methods` (see pyproject.toml), never as a top-level `methods` package."""

from prunebench.methods import dense, dns, dynthresh, magnitude, sparse_vd  # noqa: F401

__all__ = ["dense", "dns", "dynthresh", "magnitude", "sparse_vd"]

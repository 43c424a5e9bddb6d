"""Pruning methods, one module each; importing this package registers them all.

Installed as `prunebench.methods` (see pyproject.toml), never as a top-level `methods` package."""

from prunebench.methods import autoprune, dense, dns, dst, dynthresh, l0, ltp, magnitude, sparse_vd  # noqa: F401

__all__ = ["autoprune", "dense", "dns", "dst", "dynthresh", "l0", "ltp", "magnitude", "sparse_vd"]

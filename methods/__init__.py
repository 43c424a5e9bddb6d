"""Pruning methods, one module each; importing this package registers them all.

Installed as `prunebench.methods` (see pyproject.toml), never as a top-level `methods` package."""

from prunebench.methods import (  # noqa: F401
    autoprune,
    dense,
    dns,
    dst,
    dynthresh,
    gmp,
    l0,
    ltp,
    magnitude,
    rigl,
    sensitivity,
    sparse_vd,
    srinivas,
)

__all__ = ["autoprune", "dense", "dns", "dst", "dynthresh", "gmp", "l0", "ltp", "magnitude", "rigl", "sensitivity",
           "sparse_vd", "srinivas"]

"""A method's compression knob: the one hyperparameter that trades compression for accuracy, declared on
its `Pruner` class (`knob = CompressionKnob(...)`) for the matched-compression search (`prunebench curve`).

The knob names a field of the method's hyperparameter dataclass, says which way it moves compression, and
gives the interval a search may probe. A scalar knob's value is the hyperparameter's own value. A per-layer
(tuple-valued) hyperparameter, such as magnitude's `quality` or DNS's `c_rate`, is searched through one
positive *scale*: the knob value s sets every layer's value to s times the task's calibrated value (the
dataclass default where the task calibrates none), so the ratios between layers stay as calibrated and
s = 1 is the task's default. Every value a search tries is rounded to `SIGNIFICANT_DIGITS` significant
digits, so the same probe has the same run identity on every machine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Significant digits of every knob value (and of every scaled per-layer value) a search tries.
SIGNIFICANT_DIGITS = 3


def round_knob(value: float) -> float:
    """`value` to `SIGNIFICANT_DIGITS` significant digits (3.14159e-4 -> 3.14e-4)."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True)
class CompressionKnob:
    """The hyperparameter `hparam` that trades compression for accuracy.

    raises: True when a larger value prunes more (a penalty's weight), False when it prunes less (a
      threshold of what is dropped, a fraction of what is kept).
    low, high: the interval a search probes (knob values; for a `scale` knob, the factor on the calibrated
      per-layer values).
    scale: the hyperparameter is per-layer (a tuple): the knob is a factor on the task's calibrated values.
    log: search in log(value) (every bound > 0); False for a knob that is already on a log scale (sparse VD's
      log-alpha cut), searched linearly.
    exact_cut: the method's deployed network is a cut of a keep-score (`Pruner.scores`), so the trained
      network can also be cut to an exact compression afterwards instead of searching (sparse VD's log alpha).
    sparsity: the hyperparameter is the fraction of the prunable weights the method removes (GMP's and RigL's
      final sparsity), so it sets the compression 1 / (1 - value) by construction: the search's first probe is
      1 - 1/target instead of the calibrated value, the axis is -log(1 - value) (log compression: the prior
      slope 1 is exact), and values are rounded on their density 1 - value (0.9967, not 0.997). Bounds in
      [0, 1); `log` does not apply.
    note: why this hyperparameter, in one line (shown by `prunebench list` and the docs)."""

    hparam: str
    raises: bool
    low: float
    high: float
    scale: bool = False
    log: bool = True
    exact_cut: bool = False
    sparsity: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"knob {self.hparam}: low must be < high, got [{self.low}, {self.high}]")
        if self.sparsity:
            if self.scale or not (self.low >= 0 and self.high < 1) or not self.raises:
                raise ValueError(f"knob {self.hparam}: a sparsity knob is a scalar fraction in [0, 1) that raises "
                                 f"compression, got [{self.low}, {self.high}]")
        elif (self.log or self.scale) and not self.low > 0:
            raise ValueError(f"knob {self.hparam}: a log-scale or scale knob needs bounds > 0, got {self.low}")

    @property
    def direction(self) -> str:
        return "raises" if self.raises else "lowers"

    @property
    def label(self) -> str:
        """What the knob's value is: 'lam', or 'quality scale' for a factor on per-layer values."""
        return f"{self.hparam} scale" if self.scale else self.hparam

    @property
    def logarithmic(self) -> bool:
        """Whether the search axis is a log scale (log(value), or a sparsity knob's log density)."""
        return self.log or self.sparsity

    def describe(self) -> str:
        """'lam (raising it raises compression; 1e-06..0.1, log)' and so on, for tables and docs."""
        name = self.label
        cut = "; exact cut" if self.exact_cut else ""
        if self.sparsity:
            return (f"{name} (sets compression 1/(1 - {name}); {self.low:g}..{self.high:g}, log density{cut})")
        return (f"{name} (raising it {self.direction} compression; {self.low:g}..{self.high:g}, "
                f"{'log' if self.log else 'linear'}{cut})")

    def at_target(self, target: float) -> float:
        """A sparsity knob's value that sets compression `target` by construction, 1 - 1/target (rounded,
        within the bounds): where its search starts."""
        if not self.sparsity:
            raise ValueError(f"knob {self.hparam} is not a sparsity: no value sets compression by construction")
        return self.value_at(self.position(1.0 - 1.0 / target))

    def rounded(self, value: float) -> float:
        """`value` to the knob's significant digits (a sparsity knob: its density's)."""
        if self.sparsity:
            return round(1.0 - round_knob(1.0 - value), 12)
        return round_knob(value)

    def start(self, base: Any) -> float:
        """The knob value of the hyperparameters `base` (the task's calibrated defaults), within the bounds:
        where a search starts."""
        if self.scale:
            return 1.0
        return min(max(float(getattr(base, self.hparam)), self.low), self.high)

    def overrides(self, base: Any, value: float) -> dict[str, Any]:
        """The hyperparameter override that sets this knob to `value` (rounded), over `base`."""
        value = self.rounded(value)
        if not self.scale:
            return {self.hparam: value}
        return {self.hparam: tuple(round_knob(value * float(v)) for v in getattr(base, self.hparam))}

    def position(self, value: float) -> float:
        """Where `value` lies on the axis the search moves along: log(value), -log(1 - value) for a sparsity
        knob, or value for a linear knob."""
        if self.sparsity:
            return -math.log1p(-value)
        return math.log(value) if self.log else value

    def value_at(self, position: float) -> float:
        """The knob value at `position` on the search axis, clipped to the bounds and rounded."""
        if self.sparsity:
            return self.rounded(min(max(-math.expm1(-position), self.low), self.high))
        value = math.exp(position) if self.log else position
        return self.rounded(min(max(value, self.low), self.high))

"""Small statistics without SciPy: Student t quantiles, the 95% confidence interval of a mean, Welch's t-test."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t (bisection on the CDF; accurate to ~1e-12)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Sequence[float]) -> float:
    vals = finite(values)
    return sum(vals) / len(vals) if vals else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than two values."""
    vals = finite(values)
    if len(vals) < 2:
        return math.nan
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def ci95_halfwidth(values: Sequence[float]) -> float:
    """Half-width of the two-sided 95% confidence interval of the mean: t(0.975, n-1) * s / sqrt(n).
    NaN for fewer than two values (one seed says nothing about the spread)."""
    vals = finite(values)
    if len(vals) < 2:
        return math.nan
    return t_quantile(0.975, len(vals) - 1) * std(vals) / math.sqrt(len(vals))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) = mean(b): (t, degrees of freedom, two-sided p).

    t = (mean(a) - mean(b)) / sqrt(s_a^2 / n_a + s_b^2 / n_b), df by Welch-Satterthwaite. NaNs for fewer than
    two values on either side. Both samples without spread: p = 1 where the means are equal, else 0 (t = +-inf)."""
    xs, ys = finite(a), finite(b)
    if len(xs) < 2 or len(ys) < 2:
        return math.nan, math.nan, math.nan
    va, vb = std(xs) ** 2 / len(xs), std(ys) ** 2 / len(ys)
    diff = mean(xs) - mean(ys)
    if va + vb == 0:
        if diff == 0:
            return 0.0, math.nan, 1.0
        return math.copysign(math.inf, diff), math.nan, 0.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(xs) - 1) + vb ** 2 / (len(ys) - 1))
    return t, df, 2.0 * t_cdf(-abs(t), df)

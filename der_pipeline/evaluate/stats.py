"""Uncertainty: bootstrap intervals over queries, paired bootstrap tests, and means over seeds."""
from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Percentile 95% interval of the mean over queries (queries resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if n <= 0 or len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> dict:
    """Paired bootstrap of mean(a) - mean(b) over the same queries.

    The same resampled query indices are used for both methods, so per-query
    difficulty cancels. Returns the observed difference, its percentile 95%
    interval, and a two-sided p-value for "no difference": twice the smaller
    share of resampled differences on either side of 0 (with +1 smoothing, so
    it is never exactly 0), capped at 1.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired bootstrap needs two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    boot = d[idx].mean(axis=1)
    below, above = int((boot <= 0).sum()), int((boot >= 0).sum())
    p = min(1.0, 2.0 * (min(below, above) + 1) / (n + 1))
    return {"diff": float(d.mean()), "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)), "p_value": p, "n_queries": len(d)}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels``: the probability that a random positive
    scores above a random negative, ties counting half (the Mann-Whitney U statistic / (n_pos * n_neg)).
    None when one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def non_inferiority(a: np.ndarray, b: np.ndarray, margin: float, n: int, seed: int, power: float) -> dict:
    """Is ``a`` (DER) non-inferior to ``b`` (the reference) by ``margin``, on the same queries?

    ``lower``: the paired bootstrap's one-sided 95% lower bound of mean(a) - mean(b) (its 5th percentile);
    non-inferior when it is above -margin. ``mdd``: the smallest true difference this test split detects with
    probability ``power`` by a one-sided 5% paired test, (z_0.95 + z_power) x sd(a - b) / sqrt(Q), from the
    observed per-query differences. Where a and b are the same on every query (the same policy, or two that
    agree everywhere), there is nothing to test: ``same`` is set and no bound or p-value is given."""
    from scipy.stats import norm

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"non-inferiority needs two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    out = {"diff": float(d.mean()), "margin": margin, "n_queries": len(d), "power": power}
    if np.all(d == 0):
        return {**out, "same": True, "lower": None, "non_inferior": None, "mdd": None}
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lower = float(np.percentile(boot, 5.0))
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    mdd = float((norm.ppf(0.95) + norm.ppf(power)) * sd / np.sqrt(len(d)))
    return {**out, "same": False, "lower": lower, "non_inferior": lower > -margin, "mdd": mdd}

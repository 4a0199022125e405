"""The routing literature's cost-quality metrics, computed from a method's (cost, quality) points.

A method with a knob (DER's alpha, a supervised router's willingness to pay)
gives several points; a fixed method gives one. Following RouterBench, the
points are summarised by their *non-decreasing convex hull*: the upper concave
envelope (any two settings can be mixed at random, so every point on a segment
between two settings is reachable in expectation), cut at its best quality and
extended flat to the right (paying more never has to lower quality).

- AIQ (RouterBench, Hu et al. 2024, arXiv 2403.12031): the area under the hull
  from cost 0 to ``c_max`` (the largest cost of any method compared), divided
  by ``c_max``. The hull is 0 below the method's cheapest point: quality that
  no setting reaches at that budget.
- APGR (RouteLLM, Ong et al. 2024, arXiv 2406.18665): the average performance
  gap recovered between the cheapest single expert (weak: cost c_w, quality
  q_w) and the strongest single expert (strong: c_s, q_s). With the weak
  expert added as a point (any router can fall back to it),
  PGR(c) = (hull(c) - q_w) / (q_s - q_w), and APGR is the mean of PGR over
  costs c_w..c_s. RouteLLM's x-axis is the share of strong-model calls, which
  for two models is this cost axis rescaled.
- CPT(x) (RouteLLM): the cost at which the hull (with the weak point) first
  recovers a share x of the gap, PGR >= x, given as a share of the strong
  expert's cost c / c_s; None when never reached.
"""
from __future__ import annotations

import math

Point = tuple[float, float]


def upper_hull(points: list[Point]) -> list[Point]:
    """Vertices of the non-decreasing concave upper envelope of (cost, quality) points, by cost."""
    if not points:
        raise ValueError("no points")
    best: dict[float, float] = {}
    for c, q in points:
        best[float(c)] = max(float(q), best.get(float(c), -math.inf))
    pts = sorted(best.items())
    hull: list[Point] = []
    for pt in pts:  # Andrew's monotone chain, upper part: drop a vertex that lies on or below the new chord
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (pt[1] - y1) - (y2 - y1) * (pt[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(pt)
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -i))
    return hull[: top + 1]


def hull_value(hull: list[Point], c: float) -> float | None:
    """The hull's quality at cost ``c``: None below its cheapest vertex, flat after its last."""
    if c < hull[0][0]:
        return None
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        if c <= x2:
            return y1 + (y2 - y1) * (c - x1) / (x2 - x1)
    return hull[-1][1]


def _area(hull: list[Point], lo: float, hi: float) -> float:
    """Area under the hull over [lo, hi], counting 0 where the hull is undefined (below its start)."""
    if hi <= lo:
        return 0.0
    xs = sorted({lo, hi, *[x for x, _ in hull if lo < x < hi]})
    total = 0.0
    for a, b in zip(xs, xs[1:]):
        ya, yb = hull_value(hull, a), hull_value(hull, b)
        if yb is None:
            continue
        if ya is None:  # the hull starts inside (a, b]: only its part from the start counts
            a, ya = hull[0]
        total += (b - a) * (ya + yb) / 2.0
    return total


def aiq(points: list[Point], c_max: float) -> float:
    """RouterBench's AIQ: area under the non-decreasing convex hull over [0, c_max], divided by c_max."""
    if c_max <= 0:
        raise ValueError("c_max must be positive")
    return _area(upper_hull(points), 0.0, c_max) / c_max


def apgr(points: list[Point], weak: Point, strong: Point) -> float:
    """RouteLLM's APGR between the weak (cheapest) and strong (best) single experts; nan if undefined."""
    (cw, qw), (cs, qs) = weak, strong
    if cs <= cw or qs <= qw:
        return float("nan")
    hull = upper_hull([*points, weak])
    mean_q = _area(hull, cw, cs) / (cs - cw)
    return (mean_q - qw) / (qs - qw)


def cpt(points: list[Point], weak: Point, strong: Point, share: float) -> float | None:
    """RouteLLM's CPT(share): cost (as a share of the strong expert's) to recover ``share`` of the gap."""
    (_cw, qw), (cs, qs) = weak, strong
    if qs <= qw or cs <= 0:
        return None
    target = qw + share * (qs - qw)
    hull = upper_hull([*points, weak])
    if hull[0][1] >= target:
        return hull[0][0] / cs
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        if y2 >= target:
            return (x1 + (x2 - x1) * (target - y1) / (y2 - y1)) / cs
    return None

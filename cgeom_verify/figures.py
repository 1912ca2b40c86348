"""Figure series that several claims publish the same way (drawn by :meth:`CheckRun.figure`).

A rate claim says ``error ~ C x^p`` (x the sample size N with p = -1 for a Monte Carlo MSE, or
the temperature tau with p = 1 for a sharpening limit) with a setting-dependent constant C.
Divided by its own C, every setting's curve falls on the one line ``x^p``: the slope shows the
rate, the height the constant, and a curve off the line a wrong rate or constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["rate_series"]


def rate_series(curves: Iterable[tuple[str, Sequence, Sequence, Sequence | None, float]],
                exponent: float = -1.0, variable: str = "N") -> list[dict]:
    """Series for ``run.figure``: each curve ``(label, x, value, standard_error or None, C)``
    as points in units of C, then the theory line ``x^exponent``. A curve whose C is not
    positive has no place on log axes and is left out (its numbers stay in the records)."""
    series, xs = [], []
    for label, x, value, se, constant in curves:
        if not constant > 0:
            continue
        points = {"label": label, "style": "points", "x": [float(v) for v in x],
                  "y": [float(v) / constant for v in value]}
        if se is not None:
            points["yerr"] = [float(s) / constant for s in se]
        series.append(points)
        xs += points["x"]
    if xs:
        lo, hi = min(xs), max(xs)
        series.append({"label": f"theory: C {variable}^{exponent:g}", "x": [lo, hi],
                       "y": [lo**exponent, hi**exponent]})
    return series

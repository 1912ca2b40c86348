"""Plots and formulas as PNG bytes, drawn with matplotlib (Agg) in child interpreters.

A drawing task is ``(draw, data)``: ``draw(plt, data) -> bytes``, with ``data`` plain JSON-like
values, so tasks pickle to a child process. This module imports nothing of the package but
:mod:`.text`, and the package's ``__init__`` imports lazily: a drawing child starts without
torch, SymPy or SciPy (1.7 s of its 2.4 s start before).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

from .text import clip

MATH_DPI = 200  # rendered at 2x and shown at half size: sharp on high-density screens
_PLOT_DPI = 110
_MARGIN_RANGE = (1e-3, 1e3)  # margins outside are drawn at the edge


# -- the generic decision plot ---------------------------------------------------------------


def margin(decision: dict) -> float:
    """The share of its allowed margin a decision used: PASS iff < 1 (<= 1 for a bound).

    * equivalent: furthest interval end from the target / equivalence margin;
    * at_most: (estimate - target) / (estimate - lower bound);
    * exceeds: (estimate - lower bound) / (estimate - target), inf if estimate <= target;
    * bound: |estimate - target| / the stated error bound;
    * demonstrate: p-value / false-pass rate.
    An UNDERPOWERED decision is not a PASS whatever its margin.
    """
    est, target, kind = decision["estimate"], decision["target"], decision["kind"]
    lo, hi = decision["interval"]
    if kind == "equivalent":
        num, den = max(abs(lo - target), abs(hi - target)), decision["designed"]
    elif kind == "demonstrate":
        num, den = decision["p_value"], decision["false_pass_rate"]
    elif kind == "at_most":
        num, den = est - target, est - lo
    elif kind == "exceeds":
        num, den = est - lo, est - target
    else:
        num, den = abs(est - target), decision["designed"]
    if not all(math.isfinite(v) for v in (num, den)):
        return math.inf
    if den <= 0:
        return 0.0 if num <= 0 and kind != "exceeds" else math.inf
    return num / den


def margin_rows(claim: dict) -> list[tuple[str, list[dict]]]:
    rows = [(f"check: {c['name']}", c.get("decisions", [])) for c in claim["checks"]]
    rows += [(f"control: {c['name']}", c.get("decisions", [])) for c in claim["controls"]]
    return [(label, decisions) for label, decisions in rows if decisions]


def plot_margins(plt, claim: dict) -> bytes:
    from matplotlib.ticker import NullLocator

    rows = margin_rows(claim)
    lo, hi = _MARGIN_RANGE
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.42 * len(rows)), dpi=_PLOT_DPI)
    for y, (_, decisions) in enumerate(rows):
        values = [min(max(margin(d), lo), hi) for d in decisions]
        passed = [d["passed"] for d in decisions]
        for ok, color, mark in ((True, "#2e7d32", "o"), (False, "#c62828", "x")):
            xs = [v for v, p in zip(values, passed, strict=True) if p == ok]
            ax.scatter(xs, [y] * len(xs), c=color, marker=mark, s=22, alpha=0.75, zorder=3,
                       label=("decision passed" if ok else "decision failed") if y == 0 else None)
    ax.axvline(1.0, color="#444", lw=1, ls="--", label="decision boundary")
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.5, hi * 1.5)
    # the decades as plain numbers, no minor ticks: log axes' default mathtext labels and
    # minor ticks took 60 % of this plot's drawing time (45 such plots in a certificate)
    decades = [10.0**k for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    ax.set_xticks(decades, [f"{v:g}" for v in decades])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(range(len(rows)), [clip(label, 60) for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("share of the allowed margin used (pass iff < 1; controls should cross it)")
    ax.set_title("Decisions of this claim, one point each", fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # beside the axes: inside, it hid the controls' points at the right edge
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(plt, fig)


# -- published curves ----------------------------------------------------------------------


def _floats(values) -> list:
    return [math.nan if v is None else float(v) for v in values]


def plot_figure(plt, spec: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=_PLOT_DPI)
    for series in spec["series"]:
        style = series.get("style", "line")
        x = series["x"]
        x = x if any(isinstance(v, str) for v in x) else _floats(x)
        y = _floats(series["y"])
        label = series["label"]
        bounds = _bounds(series, y)
        yerr = None if bounds is None else [[a - b for a, b in zip(y, bounds[0], strict=True)],
                                            [b - a for a, b in zip(y, bounds[1], strict=True)]]
        if style == "band":
            if bounds is None:
                raise ValueError(f"band series {label!r} needs yerr (its half-width) "
                                 "or lower and upper")
            fill = ax.fill_between(x, *bounds, alpha=0.25, label=label)
            ax.plot(x, y, lw=1, color=fill.get_facecolor()[0][:3])
        elif style == "points":
            ax.errorbar(x, y, yerr=yerr, fmt="o", ms=4, capsize=2, label=label)
        elif style == "line":
            ax.errorbar(x, y, yerr=yerr, fmt="-", lw=1.5, capsize=2, label=label)
        else:
            raise ValueError(f"series {label!r}: unknown style {style!r}")
    ax.set_xscale(spec["xscale"])
    ax.set_yscale(spec["yscale"])
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel(spec["ylabel"])
    ax.set_title(clip(spec["title"], 80), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if spec["series"]:
        ax.legend(fontsize=8)
    return _png(plt, fig)


def _bounds(series: dict, y: list) -> tuple[list, list] | None:
    """A series' error interval: ``lower``/``upper`` as given, or ``y -+ yerr``."""
    if "lower" in series:  # the schema and CheckRun.figure require upper with it
        return _floats(series["lower"]), _floats(series["upper"])
    if "yerr" in series:
        yerr = _floats(series["yerr"])
        return ([a - b for a, b in zip(y, yerr, strict=True)],
                [a + b for a, b in zip(y, yerr, strict=True)])
    return None


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    try:
        # The tight box from the artists' extents alone: bbox_inches="tight" first runs a whole
        # draw without pixels to place them (10-15 % of the plots' time; the same pixels).
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        fig.savefig(buffer, format="png", bbox_inches=box.padded(plt.rcParams["savefig.pad_inches"]))
    finally:
        plt.close(fig)
    return buffer.getvalue()


#: drawings per drawing process: each is a fresh interpreter (matplotlib imported: ~0.7 s),
#: which ~16 drawings at ~0.1 s each pay back.
FIGURES_PER_PROCESS = 16
_DRAWING_CHILD = "import cgeom_verify.drawing as d; d.draw_piped()"


def draw_all(tasks: list) -> list[tuple[bytes | None, str | None]]:
    """Every ``(draw, data)`` task drawn, in order: split over child interpreters where there
    are enough (a quick certificate has ~100 plots and ~70 formulas: ~15 s of matplotlib in
    one process).
    Plain child processes fed by pipes, not multiprocessing: its spawn re-runs the parent's
    ``__main__`` (a user's script), and a fork would copy torch's and execnet's threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    processes = min(cores or 1, len(tasks) // FIGURES_PER_PROCESS)
    if processes < 2:
        return [_draw(task) for task in tasks]
    shares = [tasks[i::processes] for i in range(processes)]
    # the children import this very copy of the package (a mutant's, an uninstalled checkout)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))))}
    try:
        children = [subprocess.Popen([sys.executable, "-c", _DRAWING_CHILD], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    for _ in shares[1:]]
    except OSError:  # no child processes here
        return [_draw(task) for task in tasks]
    for child, share in zip(children, shares[1:], strict=True):
        child.stdin.write(pickle.dumps(share))
        child.stdin.close()
    drawn = [[_draw(task) for task in shares[0]]]  # this process draws a share meanwhile
    for child, share in zip(children, shares[1:], strict=True):
        out = child.stdout.read()
        # a child that died (out of memory, killed) leaves its share to this process
        drawn.append(pickle.loads(out) if child.wait() == 0 else [_draw(t) for t in share])
    return [drawn[i % processes][i // processes] for i in range(len(tasks))]


def draw_piped() -> None:
    """A drawing child: pickled tasks on stdin, their drawings pickled to stdout."""
    out, sys.stdout = sys.stdout.buffer, sys.stderr  # nothing else may reach the pipe
    tasks = pickle.loads(sys.stdin.buffer.read())
    out.write(pickle.dumps([_draw(task) for task in tasks]))


def _draw(task) -> tuple[bytes | None, str | None]:
    draw, data = task
    try:
        return draw(_pyplot(), data), None
    except Exception as exc:  # noqa: BLE001 - any drawing failure is reported, not fatal
        return None, f"{type(exc).__name__}: {exc}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# -- math ------------------------------------------------------------------------------------

# SymPy LaTeX that mathtext does not know, and what it can read instead.
_MATHTEXT_FIXES = ((r"\limits", ""), (r"\displaystyle", ""), (r"\operatorname", r"\mathrm"))


def formula(plt, latex: str) -> bytes | None:  # a drawing task (plt: imported already)
    """mathtext PNG of one LaTeX formula, or None where mathtext cannot parse it.

    Rasterised by mathtext's Agg parser and written as a grey image: ``math_to_image`` would
    parse twice (once to size a figure) and draw a whole figure, twice the time for the same
    glyphs (72 formulas in a quick certificate)."""
    import numpy as np
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    for old, new in _MATHTEXT_FIXES:
        latex = latex.replace(old, new)
    try:
        raster = MathTextParser("agg").parse(f"${latex}$", dpi=MATH_DPI,
                                             prop=FontProperties(size=15))
    except Exception:  # noqa: BLE001 - mathtext covers a subset of LaTeX; fall back to text
        return None
    buffer = io.BytesIO()
    # the glyphs' coverage, black on white
    plt.imsave(buffer, np.asarray(raster.image), format="png", cmap="gray_r", vmin=0, vmax=255)
    return buffer.getvalue()

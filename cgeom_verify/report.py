"""The human report: ``certificate.html`` (one self-contained file) and the figures.

:func:`write_reports` is what the plugin (and ``merge``) call to put a certificate
on disk. It renders everything in memory first, validates the JSON against the
published schema, then writes, each file atomically::

    figures/*.png        plots referenced by certificate.md
    certificate.md       the Markdown report (:func:`cgeom_verify.certificate.render_markdown`)
    certificate.html     the same, self-contained: PNGs embedded as data URIs
    certificate.json     last: the authority

so a run first writes an INCOMPLETE placeholder of all of them, and a killed run
never leaves a PASS report behind.

What is plotted:

* every curve a check published with :meth:`~cgeom_verify.claim.CheckRun.figure`
  (error vs N with the predicted slope, cap masses per tau, ...), for checks and
  for controls (the mutant's curve is often the clearest picture of a rejection);
* per claim, one generic plot from the decisions themselves: for each decision the
  share of its allowed margin it used (:func:`margin`; pass iff below 1), checks
  and controls side by side.

SymPy obligations are shown as math: each derivation's LaTeX rendered to a PNG by
matplotlib's mathtext (no TeX installation, no network); where mathtext cannot
parse SymPy's LaTeX (matrices, cases) the plain SymPy text is shown instead.

matplotlib runs with the Agg backend and is imported only when something is drawn.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import certificate, drawing
from .text import clip

__all__ = ["HTML_NAME", "FIGURES_DIR", "Drawings", "Image", "render_drawings",
           "render_html", "write_reports"]

HTML_NAME = "certificate.html"
FIGURES_DIR = "figures"
_RECORDS_SHOWN = 4000  # characters of a check's other records shown in the HTML


@dataclass(frozen=True)
class Image:
    """A rendered PNG (or why it could not be rendered)."""

    title: str
    file: str  # name under figures/
    png: bytes | None
    error: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "x"


@dataclass(frozen=True)
class Drawings:
    """A certificate's plots, keyed by (claim id, item key) or (claim id, None), and its
    obligations' formulas as PNGs (None where mathtext cannot parse SymPy's LaTeX)."""

    images: dict[tuple[str, str | None], list[Image]]
    formulas: dict[str, bytes | None]


def render_drawings(cert: dict) -> Drawings:
    """Every plot and formula of the certificate, drawn in one round (:func:`drawing.draw_all`).

    A figure that cannot be drawn (bad scale for its data, unknown style) becomes an
    :class:`Image` with ``error`` set: the report says so; the verdict is untouched,
    since figures illustrate the evidence and decide nothing.
    """
    jobs = []
    for claim in cert["claims"]:
        if drawing.margin_rows(claim):
            jobs.append(((claim["id"], None), "decisions: share of the margin used",
                         drawing.plot_margins, claim))
        for item in (*claim["checks"], *claim["controls"]):
            for spec in item.get("records", {}).get("figures", []):
                key = (claim["id"], f"{item['kind']}: {item['name']}")
                jobs.append((key, spec["title"], drawing.plot_figure, spec))
    formulas = sorted({_latex(d) for claim in cert["claims"] for ob in claim["obligations"]
                       for d in ob.get("derivations", [])})
    drawn = drawing.draw_all([(draw, data) for _, _, draw, data in jobs]
                             + [(drawing.formula, latex) for latex in formulas])
    images: dict[tuple[str, str | None], list[Image]] = {}
    for number, ((key, title, _, _), (png, error)) in enumerate(zip(jobs, drawn[:len(jobs)], strict=True), 1):
        file = f"{number:03d}-{_slug(key[0])}-{_slug(title)}.png"
        images.setdefault(key, []).append(Image(title, file, png, error))
    return Drawings(images, {latex: png for latex, (png, _) in
                             zip(formulas, drawn[len(jobs):], strict=True)})


def _latex(derivation: dict) -> str:
    d = derivation
    return f"{d['lhs_latex']} {certificate.LATEX_RELATION[d['relation']]} {d['rhs_latex']}"


def _png_size(png: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    return width, height


# -- HTML ------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 6px;border-top:1px solid #ddd;
 padding-top:18px}h3{font-size:15px;margin:18px 0 4px}
.banner{border-radius:8px;padding:14px 18px;margin:16px 0;font-size:22px;font-weight:650;color:#fff}
.banner small{display:block;font-size:14px;font-weight:400}
.PASS{background:#2e7d32}.FAIL{background:#c62828}.INCOMPLETE,.ERROR,.NOT-RUN{background:#ef8f00}
.NOT-APPLICABLE{background:#757575}
.badge{display:inline-block;border-radius:4px;padding:0 7px;color:#fff;font-size:12px;
 font-weight:650;vertical-align:1px}
table{border-collapse:collapse;margin:10px 0;font-size:14px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555;font-size:13px}.problem{border-left:4px solid #c62828;padding:4px 10px;
 background:#fdecea;margin:6px 0}
.item{margin:10px 0 10px 0;padding:6px 12px;border-left:3px solid #ddd}
.math{margin:4px 0 4px 12px}.math img{vertical-align:middle}img{max-width:100%;height:auto}
figure{margin:10px 0}figcaption{font-size:13px;color:#555}
code,pre{font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f4f4f6}
pre{padding:8px;overflow:auto;max-height:320px}
"""

# Counts the embedded images that decoded: the footer says "N of N images shown".
_SCRIPT = """
addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const el = document.getElementById('images-status');
  el.textContent = ok + ' of ' + imgs.length + ' images shown';
  el.dataset.ok = String(ok === imgs.length);
});
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _badge(verdict: str) -> str:
    return f'<span class="badge {verdict.replace(" ", "-")}">{_e(verdict)}</span>'


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else _e(x)


def _img(png: bytes, alt: str, scale: float = 1.0) -> str:
    width, height = _png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (f'<img alt="{_e(alt)}" width="{round(width * scale)}" height="{round(height * scale)}" '
            f'src="data:image/png;base64,{data}">')


def _figures(images: list[Image]) -> str:
    out = []
    for image in images:
        if image.png is None:
            out.append(f'<p class="problem">figure <b>{_e(image.title)}</b> could not be drawn: '
                       f"{_e(image.error)}</p>")
        else:
            out.append(f"<figure>{_img(image.png, image.title)}</figure>")  # titled inside
    return "".join(out)


def _derivation(d: dict, formulas: dict) -> str:
    text = f"{d['lhs']} {d['relation']} {d['rhs']}"
    png = formulas[_latex(d)]
    shown = _img(png, text, 100 / drawing.MATH_DPI) if png else f"<code>{_e(text)}</code>"
    verdict = "proven" if d["proven"] else f"NOT proven, residual <code>{_e(d['residual'])}</code>"
    return f'<div class="math">{_e(d["statement"])}: {verdict}<br>{shown}</div>'


def _decision_table(decisions: list[dict], examples: list[dict], control: bool) -> str:
    """The five decisions nearest to (or furthest past) their boundary."""
    failed = "fails" if control else "<b>FAILED</b>"  # a control's check is meant to fail
    worst = sorted(decisions, key=drawing.margin, reverse=True)[:5]
    rows = []
    for d in worst:
        known = d["example"] is not None and 0 <= d["example"] < len(examples)
        setting = examples[d["example"]]["setting"] if known else None
        rows.append(
            f"<tr><td>{_e(d['name'])}</td><td>{_e(d['kind'])}</td>"
            f"<td class=num>{_num(d['estimate'])} ± {_num(d['standard_error'])}</td>"
            f"<td class=num>{_num(d['target'])}</td>"
            f"<td class=num>[{_num(d['interval'][0])}, {_num(d['interval'][1])}]</td>"
            f"<td class=num>{_num(d['p_value'])}</td>"
            f"<td class=num>{_num(d['designed'])} / {_num(d['detectable'])}</td>"
            f"<td class=num>{_num(drawing.margin(d))}</td>"
            f"<td>{'ok' if d['passed'] else (failed if d['outcome'] == 'FAIL' else 'UNDERPOWERED')}</td>"
            f"<td><code>{_e(clip(json.dumps(setting), 80)) if setting is not None else ''}</code>"
            "</td></tr>")
    return ("<table><tr><th>decision</th><th>kind</th><th>estimate ± s.e.</th><th>target</th>"
            "<th>interval</th><th>p</th><th>designed / achieved detectable</th><th>margin used</th>"
            "<th></th>"
            f"<th>setting</th></tr>{''.join(rows)}</table>")


def _run_item(item: dict, images: list[Image]) -> str:
    """A check or a control: its decisions, its figures, its other records."""
    out = [f'<div class="item"><h3>{item["kind"]}: {_e(item["name"])} {_badge(item["verdict"])}</h3>']
    if item["kind"] == "control":
        if "rejected" in item:
            state = (f"rejected ({_e(item['rejected_because'])})" if item["rejected"]
                     else "<b>NOT rejected</b>: the check passed on the mutant")
            out.append(f"<p>Mutant: {_e(item['description'])}. Run through check "
                       f"<i>{_e(item['check'])}</i>: {state}.</p>")
    if item.get("error"):
        out.append(f'<p class="problem">{_e(item["error"])}</p>')
    decisions = item.get("decisions")
    if decisions is not None:
        passed = sum(d["passed"] for d in decisions)
        applicable = item["applicable"]
        out.append(f'<p class="meta">{passed}/{len(decisions)} decisions passed, each at false-fail '
                   f"rate {_num(item['false_fail_rate_per_decision'])} and false-pass rate "
                   f"{_num(item['false_pass_rate'])}; {len(item['examples'])} settings, "
                   f"{applicable['inside_assumptions']} inside the assumptions (at least "
                   f"{applicable['required']} required); "
                   f"{item['wall_time_s']:.2f} s.</p>")
        if decisions:
            out.append(_decision_table(decisions, item["examples"], item["kind"] == "control"))
    out.append(_figures(images))
    others = {k: v for k, v in item.get("records", {}).items() if k != "figures"}
    if others:
        text = json.dumps(others, indent=1)
        out.append(f"<details><summary>records</summary><pre>{_e(clip(text, _RECORDS_SHOWN))}"
                   "</pre></details>")
    out.append("</div>")
    return "".join(out)


def _claim_section(claim: dict, images: dict, formulas: dict) -> str:
    cid = claim["id"]
    out = [f'<section id="claim-{_e(cid)}"><h2>{_e(cid)} — {_e(claim["reference"])} '
           f"{_badge(claim['verdict'])}</h2><p>{_e(claim['statement'])}</p>"]
    if claim["assumptions"]:
        out.append("<p>Assumptions:</p><ul>"
                   + "".join(f"<li>{_e(a)}</li>" for a in claim["assumptions"]) + "</ul>")
    out.append(f'<p class="meta">Source: <code>{_e(claim["module"])}</code> '
               f"(package {_e(claim['source_package'])}); {claim['wall_time_s']:.1f} s.</p>")
    out.append(_figures(images.get((cid, None), [])))
    for ob in claim["obligations"]:
        out.append(f'<div class="item"><h3>obligation: {_e(ob["name"])} {_badge(ob["verdict"])}</h3>')
        if ob.get("error"):
            out.append(f'<p class="problem">{_e(ob["error"])}</p>')
        out += [_derivation(d, formulas) for d in ob.get("derivations", [])]
        out.append("</div>")
    for item in (*claim["checks"], *claim["controls"]):
        out.append(_run_item(item, images.get((cid, f"{item['kind']}: {item['name']}"), [])))
    out.append("</section>")
    return "".join(out)


def _summary_table(cert: dict) -> str:
    rows = []
    for claim in cert["claims"]:
        proven, rejected = certificate.counts(claim)
        rows.append(f'<tr><td><a href="#claim-{_e(claim["id"])}">{_e(claim["id"])}</a></td>'
                    f"<td>{_e(claim['reference'])}</td><td>{_badge(claim['verdict'])}</td>"
                    f"<td class=num>{proven}</td><td class=num>{rejected}</td>"
                    f"<td class=num>{claim['wall_time_s']:.1f} s</td></tr>")
    return ("<table><tr><th>claim</th><th>paper reference</th><th>verdict</th>"
            "<th>checks + obligations passed</th><th>controls rejected</th><th>wall time</th></tr>"
            + "".join(rows) + "</table>")


def render_html(cert: dict, drawings: Drawings | None = None) -> str:
    """The whole report as one HTML page with every image embedded."""
    drawings = render_drawings(cert) if drawings is None else drawings
    env = cert["environment"]
    git = env["git"]
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>cgeom-verify certificate: {_e(cert['verdict'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>cgeom-verify certificate</h1>",
        "<p><i>The Geometric Mechanics of Contrastive Representation Learning</i> "
        "(arXiv 2601.19597)</p>",
        f'<div class="banner {_e(cert["verdict"])}" id="verdict">Verdict: {_e(cert["verdict"])}'
        f"<small>{_e(cert.get('reason', ''))}</small></div>",
        f'<p class="meta">Profile <b>{_e(env["profile"])}</b>, master seed '
        f"<code>{_e(env['master_seed'])}</code>, device {_e(env['device']['type'])} "
        f"({_e(env['device']['name'])}), family-wise false-fail rate {_num(env['family_alpha'])}, "
        f"false-pass rate per decision {_num(env['false_pass_rate'])}. Commit "
        f"<code>{_e(git['commit'])}</code>{' (dirty)' if git['dirty'] else ''}. "
        f"Created {_e(cert['created'])}"
        + (f", {cert['wall_time_s']:.1f} s" if "wall_time_s" in cert else "")
        + f". {_e(certificate.run_scope(cert))}</p>",
        f'<p class="meta">Python {_e(env["python"])}; {_e(versions)}.</p>',
    ]
    parts += [f'<p class="problem">Provider problem: <code>{_e(p["provider"])}</code> '
              f"({_e(p['package'])}): {_e(p['message'])}</p>" for p in cert.get("problems", [])]
    if cert.get("audit"):
        parts += ["<h2>Audit</h2>",
                  *(f'<p class="meta">{_e(line)}</p>' for line in certificate.audit_lines(cert))]
    if cert["claims"]:
        parts.append(_summary_table(cert))
    parts += [_claim_section(claim, drawings.images, drawings.formulas) for claim in cert["claims"]]
    parts += [f'<p class="meta" style="margin-top:32px">cgeom-verify '
              f"{_e(env['packages'].get('cgeom-verify'))}, certificate schema "
              f'{cert["schema_version"]}. <span id="images-status">images not counted '
              "(scripts off)</span>.</p>",
              f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(parts) + "\n"


# -- files -----------------------------------------------------------------------------------


def _replace_figures(directory: Path, images: dict) -> None:
    """Swap in a complete new figures/ directory; a stale figure never outlives its run."""
    target = directory / FIGURES_DIR
    fresh = Path(tempfile.mkdtemp(dir=directory, prefix=f".{FIGURES_DIR}."))
    try:
        fresh.chmod(certificate.umask_mode(0o777))
        for image in (i for group in images.values() for i in group if i.png is not None):
            (fresh / image.file).write_bytes(image.png)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=directory, prefix=f".{FIGURES_DIR}.old."))
            os.replace(target, old / FIGURES_DIR)
        os.replace(fresh, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise


def write_reports(cert: dict, directory: str | Path) -> None:
    """Validate, render, then write figures/, the Markdown, the HTML and (last) the JSON."""
    from .schema import validate

    directory = Path(directory)
    validate(cert, "certificate to write")
    text = json.dumps(cert, indent=2, allow_nan=True) + "\n"
    drawings = render_drawings(cert)
    images = drawings.images
    links = {key: [(i.title, f"{FIGURES_DIR}/{i.file}") for i in group if i.png is not None]
             for key, group in images.items()}
    markdown = certificate.render_markdown(cert, links)
    page = render_html(cert, drawings)
    directory.mkdir(parents=True, exist_ok=True)
    if images or (directory / FIGURES_DIR).exists():
        _replace_figures(directory, images)
    certificate.atomic_write(directory / certificate.MARKDOWN_NAME, markdown)
    certificate.atomic_write(directory / HTML_NAME, page)
    certificate.atomic_write(directory / certificate.JSON_NAME, text)

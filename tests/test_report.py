"""The HTML/Markdown report: plots, math, self-containment, safe writing, and Chromium.

The certification of a small provider with published figures
(``_certified.FIGURE_PROVIDER``) feeds most tests; the Chromium test renders its HTML
headless and looks at it.
"""

import base64
import json
import re
import shutil
import subprocess

import pytest
from _certified import certified, log

from cgeom_verify import certificate, drawing, report, stats
from cgeom_verify.certificate import CertificateError
from cgeom_verify.settings import RunConfig


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The reports of the figure provider's certification: (directory, certificate)."""
    path = certified(tmp_path_factory, "figures")
    cert = json.loads(path.read_text())
    assert cert["verdict"] == "PASS", log(path)
    return path.parent, cert


def test_margin_is_below_one_exactly_when_the_decision_passes():
    # designed sizes large enough that every decision is powered: then margin alone decides
    tests = [stats.equivalent("e", est, 1.0, 0.0, margin=6.0) for est in (0.0, 2.0, -3.5, 5.0, float("nan"))]
    tests += [stats.at_most("a", est, 1.0, 0.0, discrepancy=6.0) for est in (-2.0, 1.0, 3.0, 6.0)]
    tests += [stats.exceeds("x", est, 1.0, 0.0, effect=6.0) for est in (-1.0, 1.0, 3.0, 9.0)]
    tests += [stats.within_precision("p", v, 1.0, 1e-9) for v in (1.0, 1 + 1e-10, 1 + 1e-8)]
    tests += [stats.demonstrate("d", 1.0, p, power=0.9999) for p in (1e-3, 0.05, 0.2)]
    for test in tests:
        decision = test.decide(1e-3).to_json()
        assert decision["outcome"] != "UNDERPOWERED", decision
        used = drawing.margin(decision)
        inclusive = test.kind in ("bound", "demonstrate")  # |gap| <= bound, p <= rate
        inside = used <= 1 if inclusive else used < 1
        assert inside == decision["passed"], decision


def test_report_files_and_markdown(rendered):
    out, cert = rendered
    assert sorted(p.name for p in out.iterdir()) == [
        "certificate.html", "certificate.json", "certificate.md", "figures"]
    pngs = sorted(p.name for p in (out / "figures").iterdir())
    assert len(pngs) == 3  # the decision margins, and the error-vs-N curve of check and control
    markdown = (out / "certificate.md").read_text()
    for name in pngs:
        assert f"(figures/{name})" in markdown
    assert r"$`\int" in markdown and "\\sqrt{\\pi}`$" in markdown  # obligations as math
    assert "| `rate-demo` | Thm 9.9 | **PASS** | 2/2 | 1/1 |" in markdown


def test_html_is_self_contained_and_readable(rendered):
    out, cert = rendered
    page = (out / "certificate.html").read_text()
    assert 'id="verdict">Verdict: PASS' in page
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    # 3 plots + the integral as math; the case split (beyond mathtext) falls back to text.
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    for src in sources:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(https?:|//)', page)  # nothing fetched from outside
    assert "&lt;with markup&gt;" in page and "<with markup>" not in page
    assert "<code>Piecewise((2*x, x &gt;= 0), (0, True)) == Piecewise(" in page
    # a figure that cannot be drawn is said so; the verdict is untouched
    assert "figure <b>a band without its width</b> could not be drawn: ValueError" in page
    assert "Thm 9.9" in page and "rejected (check failed)" in page


def test_placeholder_reports_are_incomplete(tmp_path):
    report.write_reports(certificate.placeholder(RunConfig(device="cpu")), tmp_path)
    assert "Verdict: INCOMPLETE" in (tmp_path / "certificate.html").read_text()
    assert "**Verdict: INCOMPLETE**" in (tmp_path / "certificate.md").read_text()
    assert not (tmp_path / "figures").exists()


def test_killed_run_leaves_no_pass_html(tmp_path_factory):
    path = certified(tmp_path_factory, "killed")  # its process died in a check (os._exit)
    assert json.loads(path.read_text())["verdict"] == "INCOMPLETE", log(path)
    page = (path.parent / "certificate.html").read_text()
    assert "Verdict: INCOMPLETE" in page and "Verdict: PASS" not in page


def test_refused_write_leaves_previous_reports_intact(rendered, tmp_path):
    out, cert = rendered
    shutil.copytree(out, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    broken = json.loads(json.dumps(cert))
    broken["claims"][0]["checks"][0]["decisions"][0]["passed"] = "yes"
    with pytest.raises(CertificateError, match="decisions/0/passed: 'yes' is not of type 'boolean'"):
        report.write_reports(broken, tmp_path / "out")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_figures_of_an_earlier_run_do_not_linger(rendered, tmp_path):
    out, cert = rendered
    report.write_reports(cert, tmp_path)
    assert len(list((tmp_path / "figures").iterdir())) == 3
    report.write_reports(certificate.placeholder(RunConfig(device="cpu")), tmp_path)
    assert list((tmp_path / "figures").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs the Debian "
                    "package `chromium`; locally: apt-get install -y chromium)")
def test_chromium_shows_the_verdict_and_every_image(rendered, tmp_path):
    out, _ = rendered
    url = (out / "certificate.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'id="verdict">Verdict: PASS' in dom.stdout, dom.stderr[-2000:]
    # the page's own onload script counted the images that decoded
    assert re.search(r'data-ok="true">(\d+) of \1 images shown', dom.stdout), dom.stdout[-500:]

    shot = tmp_path / "certificate.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = Image.open(shot).convert("RGB")
    assert pixels.size == (1200, 2000)
    count = {rgb: n for n, rgb in pixels.getcolors(maxcolors=1 << 20)}

    def pixels_near(target, tol=12):
        return sum(n for rgb, n in count.items()
                   if all(abs(a - b) <= tol for a, b in zip(rgb, target, strict=True)))

    assert pixels_near((0x2E, 0x7D, 0x32), tol=0) > 20000  # the green PASS banner
    # the error-vs-N plot was decoded and drawn: its light-blue band (#1f77b4 at alpha 0.25
    # on white) and its orange theory line (#ff7f0e)
    assert pixels_near((199, 221, 236)) > 3000
    assert pixels_near((0xFF, 0x7F, 0x0E)) > 200


def test_figures_drawn_by_child_processes_equal_those_drawn_here(monkeypatch):
    """Where there are enough figures they are split over child interpreters; the PNGs are
    the ones this process draws, in order, and a child that fails leaves its share here."""
    spec = {"title": "t", "xlabel": "x", "ylabel": "y", "xscale": "linear", "yscale": "log"}
    tasks = [(drawing.plot_figure, {**spec, "series": [{"label": f"s{k}", "x": [1, 2, 3],
                                                        "y": [1, k + 2, 0.5]}]})
             for k in range(5)]
    tasks.append((drawing.plot_figure, {**spec, "series": [{"label": "bad", "style": "?",
                                                            "x": [1], "y": [1]}]}))
    here = [drawing._draw(task) for task in tasks]
    assert here[-1][0] is None and "unknown style" in here[-1][1]
    monkeypatch.setattr(drawing, "FIGURES_PER_PROCESS", 2)
    monkeypatch.setattr(drawing.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert drawing.draw_all(tasks) == here
    monkeypatch.setattr(drawing, "_DRAWING_CHILD", "raise SystemExit(3)")
    assert drawing.draw_all(tasks) == here


def test_formulas_are_dark_glyphs_on_white_or_none():
    """A formula mathtext parses is a PNG of dark glyphs on a white ground, as tall as one
    line of 15-pt text at MATH_DPI; one it cannot parse is None (the report shows its LaTeX)."""
    import io

    plt = drawing._pyplot()
    png = drawing.formula(plt, r"\frac{\kappa_1 w_1}{\kappa_1} = \operatorname{w}_{1}")
    grey = plt.imread(io.BytesIO(png))[..., :3].mean(-1)  # RGB(A) floats in [0, 1]
    height, width = grey.shape
    assert 15 * drawing.MATH_DPI / 72 < height < 4 * 15 * drawing.MATH_DPI / 72 < width
    assert grey[0].min() == grey[-1].min() == 1.0  # white first and last rows
    assert (grey < 0.2).mean() > 0.02  # glyphs
    assert drawing.formula(plt, r"\notacommand{x}") is None

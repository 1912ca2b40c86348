"""``cgeom-verify audit``: bad input is one line and exit 2 with nothing written; a valid audit
writes a schema-valid certificate with an audit section whose verdicts match the theorem sheet;
a series of toy encoders trained at increasing misalignment shows the trend."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import numpy as np
import pytest
import torch

from cgeom_verify import cli
from cgeom_verify.kernels import clip_toy
from cgeom_verify.schema import validate


def _exit_status(argv):
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((2, n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _bad_inputs(tmp):
    cases = {}

    def npy(name, array):
        np.save(tmp / name, array)
        return str(tmp / name)

    cases["wrong shape"] = (
        [npy("shape.npy", _unit(20, 4)[:, :, :, None].repeat(2, 3))],
        "shape must be (2, n, d)",
    )
    cases["three modalities"] = (
        [npy("three.npy", np.concatenate([_unit(20, 4), _unit(20, 4)[:1]]))],
        "shape must be (2, n, d)",
    )
    u = _unit(20, 4)
    np.savez(tmp / "n.npz", image=u[0], text=u[1][:19])
    cases["n mismatch"] = ([str(tmp / "n.npz")], "n mismatch")
    np.savez(tmp / "d.npz", image=u[0], text=_unit(20, 5)[1])
    cases["d mismatch"] = ([str(tmp / "d.npz")], "d mismatch")
    np.savez(tmp / "three.npz", a=u[0], b=u[1], c=u[1])
    cases["npz of three arrays"] = ([str(tmp / "three.npz")], "needs two arrays")
    nan = u.copy()
    nan[1, 3, 2] = np.nan
    cases["NaN"] = ([npy("nan.npy", nan)], "NaN/inf")
    inf = u.copy()
    inf[0, 0, 0] = np.inf
    cases["inf"] = ([npy("inf.npy", inf)], "NaN/inf")
    cases["not unit norm"] = ([npy("norm.npy", 2 * u)], "L2-normalised")
    cases["a single pair"] = ([npy("one.npy", _unit(1, 4))], "1 pair(s)")
    (tmp / "garbage.npy").write_bytes(b"\x93NUMPY garbage, not an array")
    cases["unreadable file"] = ([str(tmp / "garbage.npy")], "unreadable")
    cases["missing file"] = ([str(tmp / "absent.npy")], "no such file")
    cases["object array"] = ([npy("text.npy", np.array([["a", "b"]]))], "numeric array expected")
    good = npy("good.npy", _unit(20, 4))
    cases["bad temperature"] = ([good, "--temperature", "-1"], "temperature must be a positive number")
    cases["temperature not a number"] = ([good, "--temperature", "hot"], "temperature must be a number")
    cases["second file bad"] = ([good, str(tmp / "nan.npy")], "NaN/inf")
    return cases


CASES = [
    "wrong shape",
    "three modalities",
    "n mismatch",
    "d mismatch",
    "npz of three arrays",
    "NaN",
    "inf",
    "not unit norm",
    "a single pair",
    "unreadable file",
    "missing file",
    "object array",
    "bad temperature",
    "temperature not a number",
    "second file bad",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    args, message = _bad_inputs(tmp_path)[case]
    reports = tmp_path / "reports"
    assert _exit_status(["audit", *args, "--reports", str(reports)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cgeom-verify: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not reports.exists()


def _certificate(reports):
    cert = json.loads((reports / "certificate.json").read_text())
    validate(cert, "audit certificate")
    return cert


def test_audit_of_the_shipped_clip_file_reproduces_the_sheet(tmp_path, monkeypatch, capsys):
    """CLIP at its learned temperature: the five claims PASS, as in claims/pretrained_models.py,
    each control rejected; the certificate validates and has the audit section."""
    source = resources.files("cgeom_verify.data.modality_gap_embeddings") / "features_clip.npy"
    with resources.as_file(source) as path:
        shutil.copy(path, tmp_path / "clip.npy")
    monkeypatch.chdir(tmp_path)  # an unrelated directory
    status = _exit_status(["audit", "clip.npy", "--temperature", "0.01", "--reports", "r", "--device", "cpu"])
    out = capsys.readouterr().out
    cert = _certificate(tmp_path / "r")
    assert status == 0, out
    assert cert["verdict"] == "PASS"
    assert cert["audit"]["files"][0]["pairs"] == 500 and cert["audit"]["files"][0]["dim"] == 512
    assert cert["audit"]["trend"] is None and cert["audit"]["temperature"] == 0.01
    ids = {c["id"]: c for c in cert["claims"]}
    assert set(ids) == set(cert["audit"]["files"][0]["claims"]) and len(ids) == 5
    assert all(co["rejected"] for c in ids.values() for co in c["controls"])
    gap = ids["audit-1-gap-exists"]["checks"][0]["records"]["gap"]
    assert abs(gap["centroid"]["value"] - 0.851) < 1e-3  # the README's orientation number
    assert "## Audit" in (tmp_path / "r" / "certificate.md").read_text()
    assert "<h2>Audit</h2>" in (tmp_path / "r" / "certificate.html").read_text()


@pytest.mark.parametrize(("shipped", "statement"), [
    ("features_clip_random.npy", ["--temperature", "0.07", "--initialisation", "random"]),
    ("features_convirt.npy", ["--temperature", "0.1", "--retrieval", "rank",
                              "--objective", "closing-favoured"]),
])
def test_audit_stated_as_the_sheet_reproduces_its_verdicts(shipped, statement, tmp_path, monkeypatch):
    """The sheet states random-init models and ConVIRT differently from a trained CLIP; given the
    same statement, the audit reaches the sheet's verdicts (every claim PASS, controls rejected)."""
    with resources.as_file(resources.files("cgeom_verify.data.modality_gap_embeddings") / shipped) as path:
        shutil.copy(path, tmp_path / "model.npy")
    monkeypatch.chdir(tmp_path)
    status = _exit_status(["audit", "model.npy", *statement, "--reports", "r", "--device", "cpu"])
    cert = _certificate(tmp_path / "r")
    verdicts = {c["id"]: c["verdict"] for c in cert["claims"]}
    assert status == 0 and set(verdicts.values()) == {"PASS"}, verdicts
    assert all(co["rejected"] for c in cert["claims"] for co in c["controls"])
    stated = dict(zip(statement[2::2], statement[3::2], strict=True))
    assert cert["audit"]["statement"]["kind"] == stated.get("--initialisation", "trained")
    assert "Stated as:" in (tmp_path / "r" / "certificate.md").read_text()


def test_audit_rejects_an_unknown_statement(tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, _unit(20, 4))
    assert _exit_status(["audit", str(good), "--initialisation", "pretrained",
                         "--reports", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cgeom-verify: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def _toy_series(tmp_path, sigmas=(0.0, 0.3, 0.6), pairs=1000, steps=300):
    """Embeddings of the Fig. 5 toy's trained encoders (identical inits), one file per sigma."""
    gen = torch.Generator()
    gen.manual_seed(7)
    sigma = torch.tensor(sigmas, dtype=torch.float64)
    data = clip_toy.ToyData()
    weights = clip_toy.initial_weights(sigma.numel(), gen, identical=True)
    final = clip_toy.train_sweep(data, sigma, weights, steps=steps, generator=gen)[steps]
    x1, x2 = clip_toy.sample_pairs(data, sigma, pairs, gen)
    z1, z2 = clip_toy.embed(final[0], x1), clip_toy.embed(final[1], x2)
    files = []
    for r, s in enumerate(sigmas):
        path = tmp_path / f"toy_sigma_{s:.1f}.npy"
        np.save(path, torch.stack([z1[r], z2[r]]).numpy())
        files.append(str(path))
    return files


def test_toy_series_shows_the_trend(tmp_path, monkeypatch, capsys):
    """The gap grows with misalignment (Fig. 5): audit finds the trend across the toy's files in
    sigma order, and the reversed order (its control) is rejected."""
    files = _toy_series(tmp_path)
    monkeypatch.chdir(tmp_path)
    _exit_status(["audit", *files, "--temperature", "0.07", "--reports", "r", "--device", "cpu"])
    capsys.readouterr()
    cert = _certificate(tmp_path / "r")
    assert cert["audit"]["trend"] == "audit-gap-trend"
    assert [f["path"] for f in cert["audit"]["files"]] == files
    trend = {c["id"]: c for c in cert["claims"]}["audit-gap-trend"]
    assert trend["verdict"] == "PASS", json.dumps(trend["checks"][0]["decisions"], indent=1)
    assert trend["controls"][0]["rejected"]
    energies = [r["energy"] for r in trend["checks"][0]["records"]["trend"]["files"]]
    assert energies[0] < energies[-1]

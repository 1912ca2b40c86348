"""Replay, diff, sharding and merge, with the toy provider; and every bad input they refuse."""

import copy
import json
from pathlib import Path

import pytest
from _certified import certified, log

from cgeom_verify import cli, replay
from cgeom_verify.replay import MergeError
from cgeom_verify.shard import Shard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The toy claim certified whole, and as shards 1/2 and 2/2: {name: certificate.json}."""
    paths = {name: certified(tmp_path_factory, f"toy-{name}") for name in ("whole", "shard1", "shard2")}
    for path in paths.values():
        assert json.loads(path.read_text())["verdict"] == "PASS", log(path)
    return paths


def _status(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _edited(path, tmp_path, name, edit):
    cert = json.loads(Path(path).read_text())
    edit(cert)
    target = tmp_path / name
    target.write_text(json.dumps(cert))
    return target


def test_shards_split_the_items_round_robin():
    keys = [f"k{i}" for i in range(7)]
    parts = [Shard(i, 3).select(keys) for i in (1, 2, 3)]
    assert parts == [["k0", "k3", "k6"], ["k1", "k4"], ["k2", "k5"]]
    assert sorted(sum(parts, [])) == sorted(keys)


def test_shard_certificates_record_their_part(runs):
    one, two = (replay.load(runs[n]) for n in ("shard1", "shard2"))
    assert one["selection"]["shard"]["index"] == 1 and two["selection"]["shard"]["count"] == 2
    items = lambda c: [i for s in ("obligations", "checks", "controls") for i in c["claims"][0][s]]  # noqa: E731
    assert len(items(one)) == 2 and len(items(two)) == 1
    # the check runs at the level of the whole run: its alpha does not depend on the split
    whole = replay.load(runs["whole"])
    checks = [c["claims"][0]["checks"] for c in (one, two, whole)]
    assert ({c[0]["false_fail_rate"] for c in checks if c}
            == {whole["claims"][0]["checks"][0]["false_fail_rate"]})


def test_merged_shards_equal_the_whole_run(runs, tmp_path, capsys):
    code, out, _ = _status(["merge", runs["shard2"], runs["shard1"], "--reports", tmp_path], capsys)
    assert code == 0, out
    merged = replay.load(tmp_path / "certificate.json")
    assert merged["verdict"] == "PASS" and [m["shard"] for m in merged["merged_from"]] == ["1/2", "2/2"]
    assert (tmp_path / "certificate.html").exists() and (tmp_path / "certificate.md").exists()
    result = replay.diff(replay.load(runs["whole"]), merged)
    assert result.identical, result.lines()
    code, out, _ = _status(["diff", runs["whole"], tmp_path / "certificate.json"], capsys)
    assert code == 0 and "identical verdicts and numbers" in out


def test_replay_reruns_what_is_recorded_and_names_each_difference(runs, tmp_path, capsys, monkeypatch):
    def tamper(cert):
        check = cert["claims"][0]["checks"][0]
        check["decisions"][0]["estimate"] += 1e-9
        check["decisions"][1]["outcome"] = "FAIL"
        check["verdict"] = cert["claims"][0]["verdict"] = cert["verdict"] = "FAIL"
        cert["environment"]["packages"]["torch"] = "0.0.1"

    edited = _edited(runs["shard2"], tmp_path, "tampered.json", tamper)
    monkeypatch.chdir(ROOT)  # where the recorded provider module (tests.providers...) is found
    code, out, err = _status(["replay", edited, "--workers", "0", "--reports", tmp_path / "again"],
                             capsys)
    assert code == 1, out + err
    assert "--profile=quick --seed=20260119 --alpha=0.01 --device=cpu --claims=toy-mean" in out
    assert "--shard=2/2" in out
    assert "environment: torch 0.0.1 -> " in out
    # exactly the tampered numbers differ: everything else was reproduced bit for bit
    check = "toy-mean / check: sample mean equals mu"
    lines = [x.strip() for x in out.splitlines()]
    differences = [x for x in lines[lines.index(next(x for x in lines if x.startswith("recorded FAIL")))
                                    + 1:] if not x.startswith("environment:")]
    tampered = json.loads(edited.read_text())["claims"][0]["checks"][0]["decisions"][0]["estimate"]
    original = replay.load(runs["shard2"])["claims"][0]["checks"][0]["decisions"][0]["estimate"]
    assert differences[:-1] == [
        "certificate: verdict FAIL -> PASS",
        "toy-mean: verdict FAIL -> PASS",
        f"{check}: verdict FAIL -> PASS",
        f"{check} / mean (example 0): estimate {tampered!r} -> {original!r}",
        f"{check} / mean (example 1): outcome 'FAIL' -> 'PASS'",
    ], out
    assert differences[-1] == "5 differences"


def test_diff_lists_claims_items_and_verdicts(runs, tmp_path, capsys):
    whole = replay.load(runs["whole"])
    other = copy.deepcopy(whole)
    other["claims"][0]["controls"][0]["rejected"] = False
    other["claims"][0]["obligations"] = []
    other["claims"].append({**other["claims"][0], "id": "extra-claim"})
    result = replay.diff(whole, other)
    assert "toy-mean / obligation: linearity of expectation: only in the first" in result.differences
    assert "toy-mean / control: shifted sampler: rejected True -> False" in result.differences
    assert "extra-claim: claim only in the second" in result.differences


def _merge_error(tmp_path, *paths):
    with pytest.raises(MergeError) as info:
        replay.merge([(str(p), replay.load(p)) for p in paths])
    return str(info.value)


@pytest.mark.parametrize("field, value, message", [
    (("git", "commit"), "0" * 40, "git.commit '" + "0" * 40 + "' differs"),
    (("profile",), "full", "profile 'full' differs from"),
    (("master_seed",), 7, "master_seed 7 differs from"),
    (("family_alpha",), 0.05, "family_alpha 0.05 differs from"),
])
def test_merge_refuses_shards_of_different_runs(runs, tmp_path, field, value, message):
    def edit(cert):
        target = cert["environment"]
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    other = _edited(runs["shard2"], tmp_path, "other.json", edit)
    assert message in _merge_error(tmp_path, runs["shard1"], other)


def test_merge_refuses_overlap_missing_foreign_and_whole(runs, tmp_path):
    assert "shard 1/2 given twice" in _merge_error(tmp_path, runs["shard1"], runs["shard1"])
    assert "missing shard(s) 2/2" in _merge_error(tmp_path, runs["shard1"])
    assert "not a shard certificate" in _merge_error(tmp_path, runs["shard1"], runs["whole"])

    def steal(cert):  # shard 2 also claims to have run shard 1's obligation
        cert["claims"][0]["obligations"] = copy.deepcopy(
            replay.load(runs["shard1"])["claims"][0]["obligations"])

    foreign = _edited(runs["shard2"], tmp_path, "foreign.json", steal)
    assert "does not belong to shard 2/2" in _merge_error(tmp_path, runs["shard1"], foreign)

    def resplit(cert):
        cert["selection"]["shard"].update(index=2, count=3)

    third = _edited(runs["shard2"], tmp_path, "third.json", resplit)
    assert "is not of the same item list" in _merge_error(tmp_path, runs["shard1"], third)


def test_merge_of_an_unfinished_shard_is_incomplete(runs, tmp_path):
    def killed(cert):  # what a shard killed mid-run leaves: the placeholder
        cert.update(verdict="INCOMPLETE", reason="run in progress, interrupted or killed", claims=[])

    placeholder = _edited(runs["shard2"], tmp_path, "killed.json", killed)
    merged = replay.merge([(str(p), replay.load(p)) for p in (runs["shard1"], placeholder)])
    assert merged["verdict"] == "INCOMPLETE"
    assert merged["claims"][0]["checks"][0]["verdict"] == "NOT RUN"


@pytest.mark.parametrize("argv, message", [
    (["run", "--shard", "0/2"], "shard '0/2': need 1 <= i <= n"),
    (["run", "--shard", "3/2"], "shard '3/2': need 1 <= i <= n"),
    (["run", "--shard", "1/0"], "shard '1/0': need 1 <= i <= n"),
    (["run", "--shard", "half"], "shard must look like i/n"),
    (["diff", "missing.json", "missing.json"], "missing.json: no such certificate"),
    (["merge"], "the following arguments are required: shards"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_certificate_files_are_refused(runs, tmp_path, capsys):
    text = runs["whole"].read_text()
    (tmp_path / "truncated.json").write_text(text[: len(text) // 2])
    (tmp_path / "empty.json").write_text("")
    cases = {
        "truncated.json": "not a readable certificate",
        "empty.json": "not a readable certificate",
        _edited(runs["whole"], tmp_path, "v3.json", lambda c: c.update(schema_version=3)).name:
            "schema version 3, this harness reads 2",
        _edited(runs["whole"], tmp_path, "bad.json",
                lambda c: c["claims"][0].update(verdict="MAYBE")).name:
            "does not conform to the certificate schema at claims/0/verdict",
    }
    for name, message in cases.items():
        for argv in (["diff", tmp_path / name, runs["whole"]], ["replay", tmp_path / name],
                     ["merge", tmp_path / name, "--reports", tmp_path / "m"]):
            code, _, err = _status(argv, capsys)
            assert code == 2 and message in err and "Traceback" not in err, (argv, err)


def test_replay_refuses_what_it_cannot_reproduce(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    gpu = _edited(runs["whole"], tmp_path, "gpu.json",
                  lambda c: c["environment"]["device"].update(type="cuda"))
    code, _, err = _status(["replay", gpu, "--reports", tmp_path / "r"], capsys)
    assert code == 2 and "no CUDA device is available" in err
    empty = _edited(runs["whole"], tmp_path, "empty.json", lambda c: c.update(
        verdict="INCOMPLETE", claims=[], selection={**c["selection"], "claims": []}))
    code, _, err = _status(["replay", empty], capsys)
    assert code == 2 and "nothing to replay" in err
    code, _, err = _status(["replay", runs["whole"], "--reports", runs["whole"].parent], capsys)
    assert code == 2 and "would overwrite the certificate being replayed" in err
    code, _, err = _status(["merge", runs["shard1"], runs["shard2"], "--reports",
                            runs["shard1"].parent], capsys)
    assert code == 2 and "would overwrite an input shard certificate" in err

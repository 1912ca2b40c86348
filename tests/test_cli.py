"""The command line: listing and one-line errors for bad input (no tracebacks)."""

import subprocess
import sys

import pytest

from cgeom_verify import cli


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--profile", "fast"], "unknown profile 'fast'"),
        (["run", "--seed", "x"], "seed must be an integer"),
        (["run", "--seed", "-1"], "seed must be an integer in [0, 2^63)"),
        (["run", "--device", "cuda"], "no CUDA device is available"),
        (["run", "--device", "gpu"], "unknown device 'gpu'"),
        (["run", "--alpha", "0"], "alpha must lie in (0, 1)"),
        (["run", "--claims", "no-such-claim"], "unknown claim id(s): no-such-claim"),
        (["run", "--workers", "many"], "workers must be 'auto'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _exit_status(argv):
    """What the console script exits with (argparse errors exit via SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_the_command_line_validates_a_run_without_the_numeric_libraries():
    """Parsing and validating ``run`` (profile, seed, device auto, alpha, shard; no claim ids
    to look up) loads none of torch, SymPy, Hypothesis, SciPy, NumPy or matplotlib: they took
    ~4 s of every command before pytest or the work itself started. In a fresh interpreter,
    since this one has them all."""
    code = ("import sys; from cgeom_verify import cli, options; from cgeom_verify.shard import Shard; "
            "a = cli._parser().parse_args(['run', '--seed', '7', '--shard', '1/2']); "
            "options.run_config(vars(a)); Shard.parse(a.shard); "
            "print(' '.join(m for m in ('torch', 'sympy', 'hypothesis', 'scipy', 'numpy', "
            "'matplotlib') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


def test_list_names_claims_and_their_package(capsys, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    assert cli.main(["list", "--providers-only", "--provider", "tests.providers.toy_claims"]) == 0
    out = capsys.readouterr().out
    assert "toy-mean" in out and "(command line)" in out


def test_list_reports_broken_provider(capsys):
    assert cli.main(["list", "--providers-only", "--provider", "no_such_module_xyz"]) == 1
    assert "import failed" in capsys.readouterr().err

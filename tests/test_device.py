"""Device correctness as a tested property, on a CPU-only machine (issue 11).

A run on ``--device cuda`` breaks when a tensor is made on the CPU while the run's tensors
live on the GPU: a factory call without ``device=`` (``torch.arange(runs)``), a generator
made without a device (``torch.Generator()``), or ``.numpy()`` on a device tensor. None of
these fails on a CPU-only machine, where every device is the CPU. This file makes them fail.

How, and why not ``torch.set_default_device("meta")``: with meta as the default device a
forgotten ``device=`` gives a meta tensor, and *some* ops mixing it with CPU tensors raise;
measured on torch 2.13, others do not: indexing a CPU tensor with a meta index, and
``torch.searchsorted`` with a meta table, return values read from no memory at all; a CPU
generator drives a meta factory silently; ``torch.Generator()`` ignores the default device
(so a CPU generator feeding ``generator.device``-placed tensors is never seen); and
``.numpy()`` on a run tensor is as fine as on the CPU. So it misses part of the class, and
can read uninitialised memory instead of failing.

Instead, :class:`DeviceDiscipline` (a ``torch.overrides.TorchFunctionMode``) and a strict
``torch.Generator`` enforce four rules on every torch call made *from project code*
(``cgeom_verify/`` or ``claims/``; torch's internals and this file are exempt):

1. a tensor factory (torch's own list of device constructors: ``arange``, ``zeros``,
   ``ones``, ``empty``, ``full``, ``tensor``, ``as_tensor``, ``linspace``, ``logspace``,
   ``eye``, ``rand*``, ``randperm``, ``triu_indices``, ...; ``torch.normal`` without tensor
   arguments; ``torch.from_numpy``) needs an explicit, non-None ``device=``, except
   ``as_tensor``/``asarray``/``tensor`` of a tensor, which keep that tensor's device;
2. ``torch.Generator`` needs an explicit device;
3. ``Tensor.numpy()`` / ``np.asarray(tensor)`` only on a *host copy*: the result of
   ``.cpu()``, or of ops on host copies only;
4. no op combines a host copy (ndim > 0) with a tensor that is not one (on CUDA that op
   would mix CPU and GPU tensors); ``.to``, ``copy_`` and factories with a device, which
   move data between devices, excepted.

Host copies are tracked by tagging what ``.cpu()`` returns (an alias, since ``.cpu()`` of a
CPU tensor is the tensor itself) and propagating the tag through ops; ``.to(device)``
clears it. Any violation raises :class:`DeviceLeak` naming the offending line, so the check
code cannot run past it. Then every registered claim's checks and controls run under the
mode on device ``cpu`` with the real check code (quick profile; only loop lengths of the
slowest checks are shortened, see ``SHRINK``); and an AST scan of ``cgeom_verify/kernels``,
``cgeom_verify/experiments`` and ``claims`` catches the same constructs on code paths that run
does not reach.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._pytree import tree_leaves

import cgeom_verify
import claims as claims_package
from cgeom_verify import registry
from cgeom_verify.claim import Check, Profiled
from cgeom_verify.evidence import check_evidence, control_evidence
from cgeom_verify.experiments.particle_reproduction import Design
from cgeom_verify.settings import RunConfig

PROJECT_DIRS = tuple(
    str(Path(p.__file__).resolve().parent) + "/" for p in (cgeom_verify, claims_package)
)
TORCH_DIR = str(Path(torch.__file__).resolve().parent) + "/"
THIS_FILE = str(Path(__file__).resolve())


class DeviceLeak(AssertionError):
    """A tensor that would not live on the run's device (or a host copy used as one)."""


# --- the mode -------------------------------------------------------------------------------

FACTORIES = frozenset(_device_constructors())
#: Factories that keep the device of a tensor argument when given one.
FOLLOW_INPUT = frozenset({torch.as_tensor, torch.asarray, torch.tensor})
TO_HOST_ARRAY = frozenset({torch.Tensor.numpy, torch.Tensor.__array__})
#: Ops that may take tensors from another device (they copy or move them).
MOVES = frozenset({torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.new_tensor})
_HOST = "_cgeom_host_copy"


def project_caller() -> str | None:
    """``file:line`` of the nearest frame outside torch and this file, if it is project code."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == THIS_FILE):
        frame = frame.f_back
    if frame is None:
        return None
    name = frame.f_code.co_filename
    if not name.startswith(PROJECT_DIRS):
        return None
    return f"{name}:{frame.f_lineno} ({frame.f_code.co_name})"


def _is_host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _HOST, False)


def _alias(t: torch.Tensor, host: bool) -> torch.Tensor:
    out = t.view_as(t)
    setattr(out, _HOST, host)
    return out


class DeviceDiscipline(TorchFunctionMode):
    """Rules 1, 3 and 4 of the module docstring (rule 2 is :class:`StrictGenerator`).

    Every violation is appended to ``leaks`` and, unless ``raise_=False``, raised: the
    record still shows it if the code under test swallows the exception.
    """

    def __init__(self, leaks: list, raise_: bool = True):
        super().__init__()
        self.leaks, self.raise_ = leaks, raise_

    def leak(self, message: str, where: str) -> None:
        self.leaks.append(f"{where}: {message}")
        if self.raise_:
            raise DeviceLeak(self.leaks[-1])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES or (func is torch.normal and not any(
                isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))):
            where = project_caller()
            data = args[0] if args else kwargs.get("data")
            follows = func in FOLLOW_INPUT and isinstance(data, torch.Tensor)
            if where and kwargs.get("device") is None and not follows:
                self.leak(f"torch.{func.__name__} without device=", where)
        elif func in TO_HOST_ARRAY:
            where = project_caller()
            if where and not _is_host(args[0]):
                self.leak("numpy() of a tensor that is not a .cpu() copy", where)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host = [t for t in inputs if _is_host(t)]
        if (host and len(host) < len(inputs) and any(t.ndim > 0 for t in host)
                and func not in MOVES and func not in FACTORIES):
            where = project_caller()
            if where:
                self.leak(f"{getattr(func, '__name__', func)} mixes a .cpu() copy with "
                          "run-device tensors", where)
        result = func(*args, **kwargs)
        if func is torch.Tensor.cpu:
            return _alias(result, True)
        if func in MOVES or func in FACTORIES:
            moved = kwargs.get("device") is not None or any(
                isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])
            if moved:  # to a device: the run's, as far as this test can tell
                if isinstance(result, torch.Tensor) and _is_host(result):
                    return _alias(result, False)
                return result
        if host and len(host) == len(inputs):
            for out in tree_leaves(result):
                if isinstance(out, torch.Tensor) and not any(out is t for t in inputs):
                    setattr(out, _HOST, True)
        return result


class _StrictGeneratorType(type):
    mode: DeviceDiscipline | None = None  # where violations go while installed

    def __instancecheck__(cls, obj):
        return isinstance(obj, torch._C.Generator)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, torch._C.Generator)

    def __call__(cls, *args, **kwargs):
        device = args[0] if args else kwargs.get("device")
        where = project_caller()
        if where and device is None and cls.mode is not None:
            cls.mode.leak("torch.Generator() without a device", where)
        return torch._C.Generator(*args, **kwargs)


class StrictGenerator(metaclass=_StrictGeneratorType):
    """Stands in for ``torch.Generator`` under :func:`device_rules` (rule 2); ``isinstance``
    and ``issubclass`` answer as for ``torch.Generator``."""


_from_numpy = torch.from_numpy


def strict_from_numpy(array):
    """Stands in for ``torch.from_numpy`` (no torch function mode sees it): always the CPU."""
    where = project_caller()
    if where and _StrictGeneratorType.mode is not None:
        _StrictGeneratorType.mode.leak("torch.from_numpy (always the CPU)", where)
    return _from_numpy(array)


def _project_modules():
    return [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == "claims" or name.startswith(("claims.", "cgeom_verify.")))]


def clear_caches() -> None:
    """Forget every memoised result of project modules (lru_cache, functools.cache, tables),
    so the code under test runs instead of answering from a cache filled outside the mode."""
    for module in _project_modules():
        for value in list(vars(module).values()):
            if (getattr(value, "__module__", None) == module.__name__
                    and callable(getattr(value, "cache_clear", None))):
                value.cache_clear()
    from cgeom_verify.kernels import clip_toy

    clip_toy._TABLES.clear()


@contextlib.contextmanager
def device_rules(raise_: bool = True):
    """Run the body under the four rules; yields the list of violations."""
    leaks: list[str] = []
    mode = DeviceDiscipline(leaks, raise_)
    saved = torch.Generator, torch.from_numpy
    torch.Generator, torch.from_numpy = StrictGenerator, strict_from_numpy
    _StrictGeneratorType.mode = mode
    try:
        with mode:
            yield leaks
    finally:
        (torch.Generator, torch.from_numpy), _StrictGeneratorType.mode = saved, None


@pytest.fixture
def device_leaks():
    """The device rules around a test (one torch thread, project caches cleared around it).
    Yields the violations: a test asserts there are none at its end, which also catches
    one that the code under test caught and ignored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_caches()
    try:
        with device_rules() as leaks:
            yield leaks
    finally:
        torch.set_num_threads(threads)
        clear_caches()


# --- the rules themselves ----------------------------------------------------------------------

#: Snippets run as if they were project code (compiled with a file name inside cgeom_verify/).
VIOLATIONS = {
    "factory without device": "torch.arange(3) + x",
    "tensor of a list without device": "torch.tensor([1.0, 2.0])",
    "as_tensor of numpy without device": "torch.as_tensor(np.ones(3))",
    "device=None is no device": "torch.zeros(3, device=None)",
    "from_numpy": "torch.from_numpy(np.ones(3))",
    "normal without tensor arguments": "torch.normal(0.0, 1.0, (3,))",
    "generator without device": "torch.Generator()",
    "numpy of a run tensor": "x.numpy()",
    "numpy of a derived run tensor": "(x * 2).numpy()",
    "np.asarray of a run tensor": "np.asarray(x)",
    "host copy mixed with a run tensor": "x.cpu() + x",
    "host copy written into a run tensor": "x.__setitem__(x > 0, x.cpu())",
}
ALLOWED = {
    "factory with the input's device": "torch.arange(3, device=x.device) + x",
    "like-factories": "torch.zeros_like(x) + x.new_ones(3)",
    "as_tensor of a tensor keeps its device": "torch.as_tensor(x, dtype=torch.float32) + x",
    "generator on a device": "torch.rand(3, generator=torch.Generator(device=x.device), device=x.device)",
    "numpy of a host copy": "x.cpu().numpy()",
    "numpy after host-side ops": "(x.detach().cpu() * 2).sum(-1).numpy()",
    "host copy moved back": "x.cpu().to(x.device) + x",
    "host copy converted on the host": "x.cpu().to(torch.float32).numpy()",
    "host copy copied into a run tensor": "x.clone().copy_(x.cpu())",
    "host scalar with a run tensor": "x.sum().cpu() * x",
}
PROBE = str(Path(cgeom_verify.__file__).resolve().parent / "_device_probe.py")


def _run_as_project_code(source: str):
    namespace = {"torch": torch, "np": np, "x": torch.ones(3)}
    exec(compile(source, PROBE, "eval" if "\n" not in source else "exec"), namespace)


@pytest.mark.parametrize("source", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_rules_catch(source):
    with device_rules() as leaks, pytest.raises(DeviceLeak, match="_device_probe.py:1"):
        _run_as_project_code(source)
    assert len(leaks) == 1


@pytest.mark.parametrize("source", ALLOWED.values(), ids=ALLOWED.keys())
def test_rules_allow(source):
    with device_rules() as leaks:
        _run_as_project_code(source)
    assert leaks == []


def test_rules_exempt_code_outside_the_project():
    with device_rules() as leaks:
        torch.arange(3).numpy()
        torch.Generator()
    assert leaks == []
    assert torch.Generator is torch._C.Generator and torch.from_numpy is _from_numpy  # restored


# --- every check and control of the paper's claims -----------------------------------------------

#: Loop lengths of the slowest checks, shortened (training steps, seeds, replicates): the code
#: that runs is the same, only fewer times (~70 s -> ~20 s for all items on one core). Verdicts
#: are not asserted here; what may not happen is a tensor off the run's device.
SHRINK = {
    "cgeom_verify.experiments.modality_gap": {
        "STEPS_AUTHORS": Profiled(quick=12, full=12),
        "STEPS_IDENTICAL": Profiled(quick=12, full=12),
        "GRADIENT_RUNS": Profiled(quick=4, full=4),
        "POPULATION": Profiled(
            quick=dict(points=64, steps=8, pairs=512, min_steps=8),
            full=dict(points=64, steps=8, pairs=512, min_steps=8),
        ),
    },
    "cgeom_verify.experiments.particle_reproduction": {
        "REPRODUCTION_DESIGN": Profiled(quick=Design(particles=96, steps=10, seeds=3),
                                        full=Design(particles=96, steps=10, seeds=3)),
        "BIAS_DESIGN": Profiled(quick=Design(particles=96, steps=10, seeds=3),
                                full=Design(particles=96, steps=10, seeds=3)),
    },
}


def _claim_items():
    found = registry.discover()
    for entry in found.claims:
        if entry.module.split(".")[0] != "claims":
            continue  # providers installed by other tests
        for item in (*entry.claim.checks, *entry.claim.controls):
            kind = "check" if isinstance(item, Check) else "control"
            yield pytest.param(item, id=f"{entry.claim.id}::{kind}: {item.name}")


@pytest.fixture
def shrunk(monkeypatch):
    for module, constants in SHRINK.items():
        module = importlib.import_module(module)
        for name, value in constants.items():
            monkeypatch.setattr(module, name, value)  # raises if the constant was renamed


@pytest.mark.parametrize("item", list(_claim_items()))
def test_claim_item_keeps_to_the_run_device(item, shrunk, device_leaks):
    config = RunConfig(profile="quick", device="cpu")
    if isinstance(item, Check):
        evidence = check_evidence(item, config, alpha=0.01)
    else:
        evidence = control_evidence(item, config, alpha=0.01)
    assert isinstance(evidence["verdict"], str)  # any verdict: only the device is tested
    assert device_leaks == []


def test_kernels_no_claim_reaches(device_leaks):
    """Public kernel functions the claims' quick checks do not call, called here."""
    from cgeom_verify.kernels import divergence_geometry, landscape, quadrature

    points, weights = quadrature.sphere_grid(6, 12, device=torch.device("cpu"))
    means = torch.nn.functional.normalize(torch.ones(2, 2, 3, dtype=torch.float64), dim=-1)
    kappas = torch.full((2, 2), 3.0, dtype=torch.float64)
    log_w = torch.log(torch.full((2, 2), 0.5, dtype=torch.float64))
    ratio = divergence_geometry.vmf_mixture_laplacian_ratio(points, means, kappas, log_w)
    lo, hi = divergence_geometry.amos_ratio_bounds(3, kappas)
    log_rho = torch.zeros(2, points.shape[0], dtype=torch.float64)
    assert ratio.shape == (2, points.shape[0]) and bool((lo <= hi).all())
    assert landscape.entropy(log_rho, weights).shape == (2,)
    assert device_leaks == []


def test_kernels_reject_a_generator_on_another_device():
    """sample_vmf and sample_pairs say which argument is off the generator's device (on
    CUDA the issue saw torch's 'Expected a 'cpu' device type for generator' from deep inside)."""
    from cgeom_verify.kernels import clip_toy, vmf

    cpu = torch.Generator(device="cpu")
    with pytest.raises(ValueError, match="mean is on meta, the generator on cpu"):
        vmf.sample_vmf(torch.zeros(2, 3, device="meta"), 1.0, 4, cpu)
    with pytest.raises(ValueError, match="sigma is on meta, the generator on cpu"):
        clip_toy.sample_pairs(clip_toy.ToyData(), torch.zeros(2, device="meta"), 4, cpu)


# --- the same constructs on code paths the quick checks do not reach -------------------------------

FACTORY_NAMES = frozenset(
    "torch.fft." + f.__name__[4:] if f.__name__.startswith("fft_") else "torch." + f.__name__
    for f in FACTORIES
) | {"torch.Generator", "torch.from_numpy"}
SOURCES = sorted(
    p.relative_to(Path(PROJECT_DIRS[0]).parent)
    for d in (Path(PROJECT_DIRS[0]) / "kernels", Path(PROJECT_DIRS[0]) / "experiments",
              Path(PROJECT_DIRS[1]))
    for p in d.glob("*.py")
)


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def static_leaks(source: str, name: str) -> list[str]:
    """Factories and generators without ``device=``, ``.numpy()`` not right after ``.cpu()``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        keywords = {k.arg for k in node.keywords}  # None: a **kwargs
        if func in FACTORY_NAMES and not keywords & {"device", None}:
            found.append(f"{name}:{node.lineno}: {func} without device=")
        if func == "torch.normal" and len(node.args) >= 3 and not keywords & {"device", None}:
            found.append(f"{name}:{node.lineno}: torch.normal without device=")
        if isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
            receiver = node.func.value
            if not (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute)
                    and receiver.func.attr == "cpu"):
                found.append(f"{name}:{node.lineno}: .numpy() not right after .cpu()")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[str(p) for p in SOURCES])
def test_source_has_no_device_leak(path):
    root = Path(PROJECT_DIRS[0]).parent
    assert static_leaks((root / path).read_text(), str(path)) == []


def test_static_scan_catches():
    source = ("a = torch.arange(3)\nb = torch.Generator()\nc = x.numpy()\n"
              "d = torch.zeros(2, device=x.device)\ne = x.detach().cpu().numpy()\n")
    assert [f.split(": ", 1)[1] for f in static_leaks(source, "m")] == [
        "torch.arange without device=", "torch.Generator without device=",
        ".numpy() not right after .cpu()"]

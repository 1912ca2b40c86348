"""The Fig. 5 sweep at the authors' setting: 160 runs (8 sigmas x 20 seeds) x 2000 steps.

Workload (paper Fig. 5; docs/derivations.md, "Fig. 5 two-modality toy"): B = 256, tau = 0.07,
Adam lr 5e-3, two linear 2x2 encoders, then the gap on 8000 held-out pairs per run. Timed:

* ``batched``: all 160 runs as one tensor program (:func:`clip_toy.train_sweep`, the
  Fourier-expanded exact CLIP gradient, one batched Adam step), wall and CPU time, per step;
* ``per_run_loop``: the authors' structure, one run at a time with dense B x B logits,
  autograd through :func:`infonce.symmetric_infonce` and ``torch.optim.Adam``; timed over
  ``LOOP_STEPS`` steps of one run and extrapolated to 160 x 2000 (the authors' code was
  measured at ~13 s per run on this 2-core CPU, ~35 min for the figure);
* ``evaluation``: the vM-KDE gap, the authors' histogram and the alignment metrics for all runs.

The per-sigma table (our D_S beside the authors' histogram Jeffreys = 2 D_S, alignment, runs
ending near-singular) is the full-setting reproduction of Fig. 5. Near-singular runs are
chaotic: their D_S (up to ~33) moves with any rounding change, so compare medians across code
versions. Torch runs one intra-op thread, like the certificate's workers: with two on this
shared 2-core machine the many small kernels oversubscribe the cores (measured: 1176 s wall,
978 s CPU for the sweep under load). ``train_sweep`` draws the next minibatch on a worker
thread where a core is spare (``train_threads`` 2; CPU time then counts both threads). Other
load inflates wall time, so CPU time is reported too, with the load average before and after
training.

Measured on this machine (AMD EPYC, 2 cores shared with other jobs; CPU, float64): the sweep
in 40-42 s wall / 39-40 s CPU at load 3-4 (19-21 ms per step); the code before the
tangential-frame rewrite 149 s wall / 147 s CPU at load ~1.5 (318 s / 235 s at higher load),
71-73 ms per step side by side at load 3. No compilation: nothing to add to the wall.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch

from cgeom_verify.kernels import angular_divergence as ad
from cgeom_verify.kernels import clip_toy, infonce

SIGMAS = tuple(round(0.1 * i, 1) for i in range(8))
SEEDS, STEPS, BATCH, TAU, LR, EVAL_PAIRS = 20, 2000, 256, 0.07, 5e-3, 8000
LOOP_STEPS = 100


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _per_run_loop_seconds(data: clip_toy.ToyData) -> float:
    """Seconds per step of one run done the authors' way (dense logits, autograd, torch Adam)."""
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.3], dtype=torch.float64)
    weights = torch.nn.Parameter(clip_toy.initial_weights(1, gen))
    opt = torch.optim.Adam([weights], lr=LR)

    def step():
        x1, x2 = clip_toy.sample_pairs(data, sigma, BATCH, gen)
        z1, z2 = clip_toy.embed(weights[0], x1), clip_toy.embed(weights[1], x2)
        loss = infonce.symmetric_infonce(z1, z2, z1, z2, TAU, include_positive=False).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up (first optimizer step imports and allocates)
        step()
    _, wall, _ = _timed(lambda: [step() for _ in range(LOOP_STEPS)])
    return wall / LOOP_STEPS


def _prefetching() -> bool:
    """Whether train_sweep, starting now, draws minibatches on a worker thread (one intra-op
    thread and a spare core by the load average: see clip_toy._minibatches)."""
    return clip_toy.PREFETCH and clip_toy._spare_core()


def _table(sigma, columns: dict) -> list[dict]:
    rows = []
    for s in SIGMAS:
        sel = np.isclose(sigma, s)
        row = {"sigma": s}
        for name, values in columns.items():
            v = values[sel]
            row[name] = {
                "median": float(np.median(v)),
                "mean": float(v.mean()),
                "sem": float(v.std(ddof=1) / math.sqrt(v.size)),
            }
        rows.append(row)
    return rows


def main() -> dict:
    torch.set_num_threads(1)
    load = os.getloadavg()
    data = clip_toy.ToyData()
    gen = torch.Generator().manual_seed(20260119)
    sigma = torch.tensor(SIGMAS, dtype=torch.float64).repeat_interleave(SEEDS)
    weights = clip_toy.initial_weights(sigma.numel(), gen)
    prefetch = _prefetching()
    history, train_wall, train_cpu = _timed(
        lambda: clip_toy.train_sweep(
            data, sigma, weights, steps=STEPS, generator=gen, tau=TAU, batch=BATCH, lr=LR
        )
    )
    load_after = os.getloadavg()
    final = history[STEPS]

    def evaluate():
        x1, x2 = clip_toy.sample_pairs(data, sigma, EVAL_PAIRS, gen)
        a, b = clip_toy.embedding_angles(final[0], x1), clip_toy.embedding_angles(final[1], x2)
        gap = ad.vm_kde_divergence(a, b, paired=True)
        hist = ad.histogram_jeffreys(a, b)
        cosine, top1 = clip_toy.alignment_metrics(
            clip_toy.embed(final[0], x1), clip_toy.embed(final[1], x2), BATCH
        )
        return gap, hist, cosine, top1

    (gap, hist, cosine, top1), eval_wall, eval_cpu = _timed(evaluate)
    loop_step = _per_run_loop_seconds(data)
    runs = sigma.numel()
    condition = torch.linalg.cond(final).amax(0).numpy()
    s = sigma.numpy()
    numbers = {
        "workload": {
            "runs": runs,
            "sigmas": list(SIGMAS),
            "seeds": SEEDS,
            "steps": STEPS,
            "batch": BATCH,
            "tau": TAU,
            "lr": LR,
            "eval_pairs": EVAL_PAIRS,
            "torch_threads": torch.get_num_threads(),
            "train_threads": 2 if prefetch else 1,
            "load_average_at_start": load,
            "load_average_after_training": load_after,
            "fourier_harmonics": clip_toy.KernelExpansion(TAU).degree,
        },
        "batched": {
            "train_wall_s": train_wall,
            "train_cpu_s": train_cpu,
            "eval_wall_s": eval_wall,
            "eval_cpu_s": eval_cpu,
            "total_wall_s": train_wall + eval_wall,
            "per_run_step_ms": 1e3 * train_wall / (runs * STEPS),
            "per_step_ms": {"wall": 1e3 * train_wall / STEPS, "cpu": 1e3 * train_cpu / STEPS},
            "compile_s": 0.0,
        },
        "per_run_loop": {
            "seconds_per_step": loop_step,
            "extrapolated_sweep_s": loop_step * runs * STEPS,
            "speedup_batched_vs_loop": loop_step * runs * STEPS / train_wall,
        },
        "per_sigma": _table(
            s,
            {
                "D_S (vM KDE)": gap.ds.numpy(),
                "Jeffreys (authors' 60-bin histogram, = 2 D_S)": hist.numpy(),
                "paired cosine": cosine.numpy(),
                "top-1 of 256": top1.numpy(),
            },
        ),
        "near_singular_runs_per_sigma": {
            str(v): int((condition[np.isclose(s, v)] > 20).sum()) for v in SIGMAS
        },
        "largest_histogram_jeffreys": float(hist.max()),
        "its_D_S_vm_kde": float(gap.ds[hist.argmax()]),
    }
    print(json.dumps({k: numbers[k] for k in ("batched", "per_run_loop")}, indent=2))
    return numbers


if __name__ == "__main__":
    main()

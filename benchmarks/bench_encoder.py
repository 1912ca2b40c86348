"""The streamed reference gradient of Thm 3.1: wall time and peak memory vs N_ref.

Workload: the largest setting the encoder-gradient check draws (m = 12, d = 10, B = 16,
cosine critic on L2-normalised outputs, tau = 0.5), the reference gradient in W over a
pool of N_ref negatives, streamed in chunks of 8192 (what the check runs) and, for
comparison, dense autograd over the whole pool. Each measurement runs in a fresh
spawned process with one torch thread; its peak memory is the rise of the process's
resident set over its size once the problem is set up (:func:`benchmarks.reset_peak_rss`), and
its CPU time is reported beside the wall time (which other load on the machine inflates).
"""

from __future__ import annotations

import multiprocessing
import time

from benchmarks import peak_rss_mib, reset_peak_rss

SIZES = tuple(2**k for k in range(14, 21))
DENSE_SIZES = tuple(2**k for k in range(14, 19))
CHUNK = 8192
M, D, B, TAU = 12, 10, 16, 0.5


def _measure(n_ref: int, streamed: bool) -> dict:
    import torch

    from cgeom_verify.kernels import encoder

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    mixture = encoder.random_mixture((), 4, M, radius=4.0, sigma=1.0, generator=gen)
    weights = encoder.init_weights((), D, M, gen)
    anchors = mixture.sample(B, gen)
    positives = encoder.augment(anchors, 0.1, gen)
    pool = encoder.ChunkedPool(lambda k, g: mixture.sample(k, g), n_ref, CHUNK, seed=1)
    baseline = reset_peak_rss()
    started, cpu_started = time.perf_counter(), time.process_time()
    if streamed:
        encoder.streamed_infonce_gradient(
            [weights], lambda p: encoder.encode(p[0], anchors, "sphere"),
            lambda p: encoder.encode(p[0], positives, "sphere"),
            lambda p, items: encoder.encode(p[0], items, "sphere"), pool, TAU, critic="cosine")
    else:
        negatives = torch.cat([pool.items(a, b) for a, b in pool.bounds()], dim=-2)
        encoder.infonce_gradient(weights, anchors, positives, negatives, TAU, output="sphere",
                                 critic="cosine")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"n_ref": n_ref, "wall_s": wall, "cpu_s": cpu, "peak_extra_mib": peak_rss_mib() - baseline}


def main() -> dict:
    context = multiprocessing.get_context("spawn")
    results = {"workload": {"m": M, "d": D, "B": B, "tau": TAU, "critic": "cosine",
                            "chunk": CHUNK, "threads": 1}}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for name, sizes, streamed in (("streamed", SIZES, True), ("dense", DENSE_SIZES, False)):
            results[name] = [pool.apply(_measure, (n, streamed)) for n in sizes]
    for name in ("streamed", "dense"):
        for row in results[name]:
            print(f"{name:8s} N_ref={row['n_ref']:8d}  wall {row['wall_s']:7.3f} s  "
                  f"cpu {row['cpu_s']:7.3f} s  peak +{row['peak_extra_mib']:8.1f} MiB")
    return results


if __name__ == "__main__":
    main()

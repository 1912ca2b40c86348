"""``cgeom-verify audit`` at scale: n = 25 000 pairs at d = 768 (synthetic), target < 60 s.

The data: unit images ``x = normalise(m_x + 0.6 z)`` around a common direction, texts
``y = normalise(x + m_y - m_x + 0.8 z')`` (a modality gap along ``m_y - m_x`` with noisy pairwise
alignment), float32 ``(2, n, d)`` as ``.npy``; no trained model, so its verdicts (claim 5 fails)
are not the point. Timed: the whole command (validation, the five
§5 claims and their controls through the pytest plugin, the certificate), wall and CPU time of
the child processes, one worker. What keeps it fast (:mod:`cgeom_verify.audit`): linear-time
statistics on all pairs (centroid distance and its bootstrap, paired-minus-unpaired cosine), the
quadratic ones (MMD/energy with permutation nulls, retrieval, the shift curve) on a fixed
random subsample of 1000 pairs, the classifier cross-fitted on 1000 pairs.

Measured on the shared 2-core CPU under other sessions' load: 35.7 s CPU / 146 s wall (load
average 13.7) and 34.2 s CPU / 103 s wall (11.9). The work is single-threaded (the plugin pins
torch to one thread), so on an idle machine the wall time is about the CPU time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N, D, TARGET_S = 25_000, 768, 60.0


def synthetic(path: Path, n: int = N, d: int = D, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    mx, my = np.zeros(d), np.zeros(d)
    mx[0], my[1] = 1.0, 1.0
    x = mx + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d) * 8
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x + (my - mx) + 0.8 * rng.standard_normal((n, d)) / np.sqrt(d) * 8
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    np.save(path, np.stack([x, y]).astype(np.float32))


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "embeddings.npy"
        synthetic(data)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "cgeom_verify.cli",
                "audit",
                str(data),
                "--temperature",
                "0.05",
                "--reports",
                str(Path(tmp) / "r"),
                "--device",
                "cpu",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cert = (
            json.loads((Path(tmp) / "r" / "certificate.json").read_text())
            if proc.returncode in (0, 1)
            else {}
        )
    return {
        "pairs": N,
        "dim": D,
        "wall_s": round(wall, 2),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "load_average_at_start": load,
        "target_s": TARGET_S,
        "under_target": wall < TARGET_S,
        "exit_status": proc.returncode,
        "verdict": cert.get("verdict"),
        "claims": {c["id"]: c["verdict"] for c in cert.get("claims", [])},
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

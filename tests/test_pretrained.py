"""The §5 machinery on real embeddings: the shipped data, the two-sample kernels, the sheet."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import torch

from cgeom_verify import audit
from cgeom_verify.kernels import two_sample as ts

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_shipped_files_load_offline_with_licence_and_readme_numbers():
    root = resources.files(audit.DATA_PACKAGE)
    assert "MIT License" in (root / "LICENSE").read_text()
    assert "Weixin-Liang/Modality-Gap" in (root / "README.md").read_text()
    readme = {"clip": 0.851, "clip-random": 1.136, "convirt": 0.823, "convirt-random": 1.403}
    for key, name in audit.SHIPPED.items():
        data = audit.read_pairs(f"package:{name}")
        assert data.shape == (2, 500, 512)
        assert np.linalg.norm(data[0].mean(0) - data[1].mean(0)) == pytest.approx(readme[key], abs=5e-4)


def _brute_u(k, m, paired):
    x = range(m)
    y = range(m, 2 * m)
    kxx = sum(k[i, j] for i in x for j in x if i != j) / (m * (m - 1))
    kyy = sum(k[i, j] for i in y for j in y if i != j) / (m * (m - 1))
    if paired:
        kxy = sum(k[i, m + j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        kxy = sum(k[i, j] for i in x for j in y) / (m * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("paired", [False, True])
def test_two_sample_u_matches_the_definition(device, paired):
    gen = torch.Generator(device=device)
    gen.manual_seed(1)
    z = torch.randn(12, 3, generator=gen, device=device, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    dist = ts.chordal_distance(z, z)
    kernels = [-dist, ts.rbf_kernel(dist, 0.7)]
    values, null = ts.two_sample_u_many(kernels, 6, permutations=64, generator=gen, paired=paired)
    assert null.shape == (2, 64) and null.device.type == device
    for k, kern in enumerate(kernels):
        assert float(values[k]) == pytest.approx(_brute_u(kern.cpu().numpy(), 6, paired), abs=1e-12)
    if not paired:
        assert ts.two_sample_u(kernels[0], 6)[0] == pytest.approx(float(values[0]), abs=1e-12)


def test_paired_null_swaps_inside_pairs_and_is_centred():
    """Under exchangeable pairs the paired U-statistic's swap null is centred at 0 (unbiased)."""
    gen = torch.Generator()
    gen.manual_seed(3)
    z = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    dist = ts.chordal_distance(z, z)
    _, null = ts.two_sample_u_many([-dist], 200, permutations=400, generator=gen, paired=True)
    assert abs(float(null.mean())) < 4 * float(null.std()) / math.sqrt(400)


def test_bootstrap_counts_and_permutations():
    gen = torch.Generator()
    gen.manual_seed(0)
    w = ts.bootstrap_counts(50, 30, gen, "cpu")
    assert torch.all(w.sum(1) == 30)
    perm = ts.random_permutations(20, 30, gen, "cpu")
    assert torch.all(perm.sort(1).values == torch.arange(30))


def test_pairing_permutation_statistic_is_the_paired_mean():
    sim = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    gen = torch.Generator()
    gen.manual_seed(0)
    stat, null = ts.pairing_permutation(sim, 100, gen)
    assert stat == pytest.approx(float(sim.diagonal().mean()))
    assert null.mean() == pytest.approx(float(sim.mean()), abs=0.5)


def test_binary_divergence_bound():
    bound, p = ts.binary_divergence_bound(250, 250, 500)
    assert bound == 0.0 and p == 1.0
    bound, p = ts.binary_divergence_bound(500, 0, 500)
    assert bound > 4.0 and p < 1e-12
    for hits_x in (262, 270, 280, 300):  # the bound is positive iff p <= the level
        bound, p = ts.binary_divergence_bound(hits_x, 500 - hits_x, 500, 0.05)
        assert (bound > 0) == (p <= 0.05)
    e = ts.designed_rate_gap(0.1)
    assert 0.5 * ts._jeffreys_binary(0.5 + e, 0.5 - e) == pytest.approx(0.1)


def test_symmetric_infonce_per_pair_is_the_clip_loss():
    gen = torch.Generator()
    gen.manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(9, 4, generator=gen, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(9, 4, generator=gen, dtype=torch.float64), dim=1)
    logits = x @ y.T / 0.1
    labels = torch.arange(9)
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.T, labels))
    assert float(ts.symmetric_infonce_per_pair(x, y, 0.1).mean()) == pytest.approx(float(clip))


def test_nwj_terms_lower_bound_kl_of_two_gaussians():
    """NWJ with the optimal critic 1 + log p/q recovers KL; any other critic gives less."""
    gen = torch.Generator()
    gen.manual_seed(4)
    x = torch.randn(200_000, generator=gen, dtype=torch.float64)
    y = torch.randn(200_000, generator=gen, dtype=torch.float64) + 1.0
    logit = lambda z: -0.5 * z**2 + 0.5 * (z - 1.0) ** 2  # noqa: E731  log p/q, p = N(0,1), q = N(1,1)
    exact = 0.5  # KL both ways = 1/2, so D_S = 1/2
    assert float(ts.nwj_terms(1 + logit(x), 1 + logit(y)).mean()) == pytest.approx(exact, abs=0.02)
    assert float(ts.nwj_terms(1 + 0.5 * logit(x), 1 + 0.5 * logit(y)).mean()) < exact


def test_sheet_states_five_claims_per_model_each_with_a_control():
    from claims import pretrained_models as sheet

    claims = [v for v in vars(sheet).values() if isinstance(v, audit.Claim)]
    assert len(claims) == 20 and len({c.id for c in claims}) == 20
    assert all(c.checks and c.controls for c in claims)
    assert {m.source.temperature for m in sheet.MODELS} == {0.01, 0.07, 0.1}

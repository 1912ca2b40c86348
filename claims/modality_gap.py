"""The modality gap grows with misalignment (paper Fig. 5, "barrier-driven co-adaptation").

The symmetric multimodal objective carries ``-D_S(q1, q2)`` (Prop 4.1), and the paper's
Fig. 5 shows, in a two-modality toy, that the gap ``D_S`` between the two embedding marginals
grows with the misalignment sigma of the pairs, is not an artifact of initialisation, and
coexists with strong pairwise alignment. The authors' toy: angle
``theta ~ 0.7 vM(0, 6) + 0.3 vM(pi, 6)``, ``theta2 = theta + sigma N(0, 1)``, inputs
``(cos, sin) + 0.02 N``, two linear 2x2 encoders, symmetric CLIP at tau = 0.07, B = 256,
Adam lr 5e-3, 2000 steps, sigma in {0, ..., 0.7}, 20 seeds; gap = 60-bin histogram
Jeffreys (``2 D_S``) on 8000 pairs. Their histogram explodes on empty bins; so every gap
number here comes from a calibrated estimator.

Claims (D_S = (KL(p||q) + KL(q||p))/2 throughout; "Jeffreys" = 2 D_S):

* ``fig5-gap-estimator`` — the von Mises KDE estimator of :mod:`.angular_divergence`
  (split-half bias correction), at a kernel concentration fixed by the design (the
  AMISE-optimal one for the true law, not chosen from the sample), agrees (TOST, 10 % /
  3 % of the target) with the smoothed divergence ``D(p*K, q*K)`` computed independently
  (closed-form smoothed vM densities, adaptive quadrature); with its cross-validated
  bandwidth its null at the toy's law is centred at 0; it obeys exact identities and the
  floor's rigorous bound on degenerate inputs.
* ``fig5-gap-grows-with-misalignment`` — the authors' sweep (independent inits), all runs as
  one batched program: Jonckheere–Terpstra (permutation null) for D_S increasing in sigma,
  with the seeds per sigma designed for power at a stated pairwise ordering probability;
  the Fourier-expanded CLIP gradient that trains it equals autograd of a separately written
  CLIP loss, and its batched Adam equals torch.optim.Adam; the trend test's permutation p-value
  equals exact enumeration on a small example.
* ``fig5-gap-not-init-artifact`` — both encoders start identical; the trained gap still
  increases with sigma, is equivalent to the estimator's null at sigma = 0 (TOST), lies
  above it for sigma >= 0.4 (Mann–Whitney), and there every run keeps strong held-out
  alignment (paper: "strong pairwise alignment coexists with a persistent modality gap").
* ``fig5-population-gap`` — the deterministic large-batch objective J_mm (Thm 4.1) on a
  quadrature grid, no minibatch noise (the trainer's J_mm equals a directly written
  quadrature with an explicit coupling matrix): the optimum's gap (exact by quadrature, and by the
  estimator) still increases with sigma, and for sigma >= 0.4 exceeds the smallest gap that
  linear encoders can reach (a search for min D_S started at the optimum's own maps goes
  lower): the objective keeps a gap it could shed, as the -D_S term predicts.

What did not check out is recorded, not hidden: at step 0 identical encoders do NOT give
q1 = q2 for sigma > 0 (the input laws differ), and training *shrinks* that inherited gap
(recorded next to the data-level gap ``D_S(p, p * WN_sigma)``): the gap does not "open", it
is reduced to a level that grows with sigma; and with independent inits a
fraction of runs end near-singular (orientation mismatch at init), which is where the
authors' huge histogram values come from: our finite estimator gives them large values too.

Design (issue 12): every sample size below is computed from the check's error rates before
sampling: seeds per sigma from the Jonckheere–Terpstra power at the designed ordering
probability (:func:`cgeom_verify.stats.jt_power`), replicates from a predicted s.d.
(influence functions under the closed forms, or a stated pilot s.d.) through
:func:`cgeom_verify.stats.min_num_samples`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import hypothesis.strategies as st
import numpy as np
import sympy
import torch
from scipy import optimize

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.kernels import angular_divergence as ad
from cgeom_verify.kernels import clip_toy, quadrature, rank_design

SIGMAS = tuple(round(0.1 * i, 1) for i in range(8))
#: sigma from which the gap is certified above the estimator's null (set after exploratory runs
#: of 4-20 seeds, where the median gap first clears the null's spread by an order of magnitude).
GAP_SIGMA = 0.4
#: "strong alignment": every run's held-out mean cosine exceeds e^{-sigma^2/2}, the mean cosine
#: of the input pairs' own angles (what identical identity encoders would score), and its top-1
#: retrieval among 256 candidates (the batch) is above chance.
CHANCE_TOP1 = 1.0 / 256

#: Designed effect of the trend tests: a run at the larger of two sigmas has the larger gap with
#: probability >= TREND_PI. The J_mm optimum orders every pair of sigmas (fig5-population-gap);
#: training noise blurs that (exploratory runs from identical inits: above 0.95), and with
#: independent inits near-singular runs (orientation mismatch at init) blur it much more:
#: estimates 0.71, 0.78 and 0.82 over three seeds at 450 steps, so that design takes 0.70.
TREND_PI = 0.75
AUTHORS_TREND_PI = 0.70
#: Designed effect of "above the null": a gap at sigma >= 0.4 exceeds a null replicate with
#: probability >= 0.9 (exploratory runs: every gap above every null replicate).
ABOVE_NULL_PI = 0.9
#: Pilot s.d. of one null replicate (toy law, 8000 vs 8000 draws, cross-validated bandwidth:
#: 7.5e-4 over 80 replicates, 1.0e-3 over 119) and of the trained sigma = 0 gap from identical
#: inits (8 runs: 4e-4), inflated for the pilots' own uncertainty: the replicate design uses them.
NULL_SD = 1.4e-3
SIGMA0_SD = 1.5 * 4.0e-4
#: Inflation of the influence-function s.d. of the S^1 estimator (pilot at the oracle
#: bandwidth, 6 laws x 400 replicates: observed/predicted s.d. <= 1.39; the margin covers the
#: scatter of the s.d. estimate itself).
INFLUENCE_INFLATION = 1.7
#: Inflation of the per-pair s.d. of cos(theta2 - theta) predicted from the wrapped normal
#: (the trained maps and the input noise spread it; pilot: observed/predicted <= 1.1).
COSINE_SD_INFLATION = 1.5
#: top-1 rate the alignment design plans its s.e. for (exploratory runs at sigma >= 0.4: at most
#: 0.022; the s.e. grows with the rate, so the design takes a rate above every one seen).
TOP1_DESIGN_P = 0.05


def input_pair_cosine(sigma: float) -> float:
    """``E cos(theta2 - theta) = exp(-sigma^2 / 2)`` for ``theta2 - theta ~ N(0, sigma^2)``."""
    return math.exp(-0.5 * sigma**2)


def input_pair_cosine_sd(sigma: float) -> float:
    """s.d. of ``cos(sigma Z)``: ``Var = (1 + e^{-2 sigma^2})/2 - e^{-sigma^2}``."""
    return math.sqrt(max(0.5 * (1 + math.exp(-2 * sigma**2)) - math.exp(-(sigma**2)), 0.0))


#: a run counts as near-singular (reported only) when an encoder's condition number exceeds this.
SINGULAR_CONDITION = 20.0


# --- the implementations under test ---------------------------------------------------------


@dataclass(frozen=True)
class GapEstimator:
    """The gap estimator; ``split_half=False`` is the raw plug-in (a mutant: O(1/n) bias)."""

    split_half: bool = True

    def divergences(self, x, y, paired=False, concentration=None):
        """``(D_S, KL(p||q), concentration, s.e.)`` for angle samples."""
        est = ad.vm_kde_divergence(x, y, paired=paired, concentration=concentration)
        if self.split_half:
            return est.ds, est.kl_pq, est.concentration, est.ds_se
        return est.ds_plugin, est.kl_pq_plugin, est.concentration, est.ds_se


@dataclass(frozen=True)
class Fig5Experiment:
    """How the toy is trained and read out. Mutants: ``reverse_labels`` pairs every run with
    the mirrored sigma (a descending sort); ``identical_inputs`` feeds both encoders the same
    inputs; ``shuffle_pairs`` measures alignment on mismatched held-out pairs;
    ``expansion_tail`` is the truncation of the Fourier kernel expansion; ``adam_betas`` are the
    optimiser's moment decays (the authors use torch.optim.Adam's defaults)."""

    init: str = "independent"
    identical_inputs: bool = False
    reverse_labels: bool = False
    shuffle_pairs: bool = False
    expansion_tail: float = 1e-10
    adam_betas: tuple = (0.9, 0.999)
    estimator: GapEstimator = GapEstimator()


@dataclass(frozen=True)
class Fig5Setting:
    """The authors' toy (paper Fig. 5)."""

    weight: float = 0.7
    kappa: float = 6.0
    input_noise: float = 0.02
    tau: float = 0.07
    batch: int = 256
    lr: float = 5e-3
    sigmas: tuple = SIGMAS
    eval_pairs: int = 8000

    def data(self) -> clip_toy.ToyData:
        return clip_toy.ToyData(self.weight, self.kappa, self.input_noise)


AUTHORS = Fig5Setting()


# --- the design: sample sizes from the error rates, before sampling --------------------------

#: Profile minimums (the full profile keeps the authors' 20 seeds; the design may ask for more).
MIN_SEEDS_AUTHORS = Profiled(quick=2, full=20)
STEPS_AUTHORS = Profiled(quick=450, full=1000)
MIN_SEEDS_IDENTICAL = Profiled(quick=2, full=10)
STEPS_IDENTICAL = Profiled(quick=200, full=600)


def _trend_seeds(run, decisions: int, minimum, pi: float = TREND_PI) -> int:
    """Seeds per sigma so the JT decision has power 1 - its false-fail rate at ordering ``pi``."""
    return stats.jt_group_size(
        len(SIGMAS), pi, 1.0 - run.decision_false_fail_rate(decisions), run.false_pass_rate,
        minimum=run.pick(minimum),
    )


def _data_level_gap(setting: Fig5Setting, device) -> list[float]:
    """``D_S(p, p * WN_sigma)``: the gap identity encoders would inherit from the inputs' laws."""
    like = {"dtype": torch.float64, "device": device}
    sigma = torch.tensor(setting.sigmas, **like)
    phi = torch.arange(8192, **like) * (2 * math.pi / 8192)
    eye = torch.eye(2, **like).expand(sigma.numel(), 2, 2)
    data = replace(setting.data(), input_noise=0.0)
    q1 = clip_toy.pushforward_density(data, eye, phi)
    q2 = clip_toy.pushforward_density(data, eye, phi, sigma)
    return (0.5 * ((q1 - q2) * (q1.log() - q2.log())).mean(-1)).tolist()


def _inherited_gap(setting: Fig5Setting, sigma: float, device) -> float:
    return _data_level_gap(setting, device)[list(setting.sigmas).index(sigma)]


def _null_margin(run, setting: Fig5Setting) -> float:
    """An estimator bias must stay below 10 % (quick) / 3 % (full) of the smallest inherited gap
    the sweep reports as nonzero on the histogram scale (sigma = 0.2: 9.1e-3); the target is 0,
    so the margin is absolute."""
    return run.relative_discrepancy * _inherited_gap(setting, 0.2, run.device)


def _null_replicates(run, setting: Fig5Setting, decisions: int) -> int:
    return stats.min_num_samples(
        NULL_SD, _null_margin(run, setting), run.decision_false_fail_rate(decisions),
        run.false_pass_rate, kind="equivalent",
    )


def _alignment_pairs(run, setting: Fig5Setting, decisions: int, seeds: int) -> int:
    """Held-out pairs per run for the alignment decisions (a multiple of the batch): each run's
    mean cosine, and each sigma's top-1 pooled over its ``seeds`` runs."""
    a, b = run.decision_false_fail_rate(decisions), run.false_pass_rate
    need = []
    for s in setting.sigmas:
        if s >= GAP_SIGMA - 1e-9:
            effect = run.relative_discrepancy * (1 - input_pair_cosine(s))
            need.append(stats.min_num_samples(
                COSINE_SD_INFLATION * input_pair_cosine_sd(s), effect, a, b, kind="exceeds"))
    p = TOP1_DESIGN_P
    trials = stats.min_num_samples(math.sqrt(p * (1 - p)), CHANCE_TOP1, a, b, kind="exceeds")
    need.append(math.ceil(trials / seeds))
    return setting.batch * math.ceil(max(need) / setting.batch)


# --- shared computations --------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """Everything read out of one batched sweep (numpy, one entry per run)."""

    sigma: np.ndarray
    steps: tuple
    gap: np.ndarray  #: D_S at each step of ``steps`` x runs
    jeffreys_histogram: np.ndarray  #: the authors' estimator, final step
    cosine: np.ndarray
    cosine_se: np.ndarray
    top1: np.ndarray
    top1_se: np.ndarray
    condition: np.ndarray
    shuffled_cosine: np.ndarray
    shuffled_top1: np.ndarray
    alignment_pairs: int


@functools.lru_cache(maxsize=4)
def _sweep(
    setting: Fig5Setting,
    init: str,
    identical_inputs: bool,
    adam_betas: tuple,
    seeds: int,
    steps: int,
    seed: int,
    estimator: GapEstimator,
    trajectory: bool,
    alignment_pairs: int,
    device: torch.device,
) -> Sweep:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    sigma = torch.tensor(setting.sigmas, dtype=torch.float64, device=device)
    sigma = sigma.repeat_interleave(seeds)
    data = setting.data()
    weights = clip_toy.initial_weights(sigma.numel(), gen, identical=(init == "identical"))
    checkpoints = tuple(steps * i // 4 for i in range(1, 4)) if trajectory else ()
    history = clip_toy.train_sweep(
        data,
        sigma,
        weights,
        steps=steps,
        generator=gen,
        tau=setting.tau,
        batch=setting.batch,
        lr=setting.lr,
        betas=adam_betas,
        identical_inputs=identical_inputs,
        checkpoints=checkpoints,
    )
    x1, x2 = clip_toy.sample_pairs(data, sigma, setting.eval_pairs, gen, identical_inputs)
    order = sorted(history)
    gaps = []
    for step in order:
        w = history[step]
        a, b = clip_toy.embedding_angles(w[0], x1), clip_toy.embedding_angles(w[1], x2)
        gaps.append(estimator.divergences(a, b, paired=True)[0].cpu().numpy())
    final = history[order[-1]]
    a, b = clip_toy.embedding_angles(final[0], x1), clip_toy.embedding_angles(final[1], x2)
    # alignment on its own held-out pairs, as many as the alignment decisions need (a few runs
    # at a time: the full profile asks for ~1.7e5 pairs per run)
    pairs = max(alignment_pairs, setting.batch)
    chunk = max(1, int(4e6 // pairs))
    parts = []
    for lo in range(0, sigma.numel(), chunk):
        sel = slice(lo, lo + chunk)
        y1, y2 = clip_toy.sample_pairs(data, sigma[sel], pairs, gen, identical_inputs)
        z1, z2 = clip_toy.embed(final[0, sel], y1), clip_toy.embed(final[1, sel], y2)
        parts.append((
            *clip_toy.alignment_metrics(z1, z2, setting.batch),
            *clip_toy.alignment_metrics(z1, z2.roll(1, dims=1), setting.batch),
            (z1 * z2).sum(-1).std(-1),
        ))
    cosine, top1, shuffled_cosine, shuffled_top1, pair_sd = (torch.cat(t) for t in zip(*parts, strict=True))
    # top-1 averages the two directions of the same groups: at most as variable as one direction
    trials = (pairs // setting.batch) * setting.batch
    top1 = top1.cpu().numpy()
    return Sweep(
        sigma=sigma.cpu().numpy(),
        steps=tuple(order),
        gap=np.stack(gaps),
        jeffreys_histogram=ad.histogram_jeffreys(a, b).cpu().numpy(),
        cosine=cosine.cpu().numpy(),
        cosine_se=(pair_sd / math.sqrt(pairs)).cpu().numpy(),
        top1=top1,
        top1_se=np.sqrt(np.maximum(top1 * (1 - top1), 1.0 / trials) / trials),
        condition=torch.linalg.cond(final).amax(0).cpu().numpy(),
        shuffled_cosine=shuffled_cosine.cpu().numpy(),
        shuffled_top1=shuffled_top1.cpu().numpy(),
        alignment_pairs=pairs,
    )


def _sweep_for(run, subject: Fig5Experiment, seeds: int, steps, trajectory=False,
               alignment_pairs: int = 0) -> Sweep:
    return _sweep(
        run.settings[0],
        subject.init,
        subject.identical_inputs,
        subject.adam_betas,
        seeds,
        run.pick(steps),
        run.seeds[0],
        subject.estimator,
        trajectory,
        alignment_pairs,
        run.device,
    )


def _labels(subject: Fig5Experiment, sigma: np.ndarray) -> np.ndarray:
    """The sigma each run is filed under (the mutant files it under the mirrored sigma)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if not subject.reverse_labels:
        return sigma
    return np.round(SIGMAS[0] + SIGMAS[-1] - sigma, 10)


def _groups(values: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    return [values[np.isclose(labels, s)] for s in SIGMAS]


@functools.lru_cache(maxsize=4)
def _null_gaps(setting: Fig5Setting, replicates: int, seed: int, estimator: GapEstimator,
               device: torch.device):
    """The estimator on two independent samples of the toy's angle law (eval size): its null."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    data = setting.data()
    out = []
    for lo in range(0, replicates, 256):  # bounded memory for the full profile's ~900
        rows = min(256, replicates - lo)
        x = data.sample_angles((rows, setting.eval_pairs), gen)
        y = data.sample_angles((rows, setting.eval_pairs), gen)
        out.append(estimator.divergences(x, y)[0].cpu().numpy())
    return np.concatenate(out)


def _per_sigma_table(sigma, columns: dict) -> list[dict]:
    rows = []
    for s in np.unique(sigma):
        sel = sigma == s
        row = {"sigma": float(s), "runs": int(sel.sum())}
        for name, values in columns.items():
            v = values[sel]
            m, se = stats.mean_se(v) if v.size > 1 else (float(v.mean()), float("nan"))
            row[name] = {"median": float(np.median(v)), "mean": float(m), "sem": float(se)}
        rows.append(row)
    return rows


def _trend_test(name: str, values: np.ndarray, labels: np.ndarray, run, decisions: int, seed: int,
                note: str = "", pi: float = TREND_PI):
    """JT (permutation null, stats.jonckheere_terpstra) and its designed power at ordering ``pi``."""
    groups = _groups(values, labels)
    jt = stats.jonckheere_terpstra(groups, seed=seed)
    power = stats.jt_power([len(g) for g in groups], pi, run.false_pass_rate)
    return jt, stats.demonstrate(
        name, jt.statistic, jt.p_value, power=power,
        note=(f"{len(values)} runs; permutation p ({jt.method}); z = {jt.z:.2f}; designed "
              f"effect: pairwise ordering probability {pi}, power {power:.6f} (normal "
              f"approximation){'; ' + note if note else ''}"),
    )


# === claim 1: the estimator =================================================================

estimator_claim = Claim(
    id="fig5-gap-estimator",
    reference="Fig. 5 (gap estimator)",
    statement=(
        "The von Mises KDE estimator of KL (both directions) and D_S on S^1 (split-half "
        "correction), at a kernel concentration fixed by the design (AMISE-optimal for the true "
        "law and n), agrees within 10 % (quick) / 3 % (full) with the smoothed divergence "
        "D(p*K, q*K) computed independently (closed-form smoothed von Mises densities, "
        "adaptive quadrature); with its "
        "cross-validated bandwidth its null at the toy's law (n = 8000) is centred at 0; "
        "identical samples give exactly 0 and disjoint ones stay within the rigorous bound the "
        "density floor implies (the authors' histogram is bounded only by its smoothing); its "
        "cross-validation criterion equals a direct pairwise sum."
    ),
    assumptions=(
        "von Mises pairs with kappa in [1, 15], concentration ratio <= e^0.25, D_S between "
        "about 0.05 and 1 (offsets from 0.3 to 1 of the one giving D_S = 1)",
        "independent samples for the calibration; the toy's evaluation pairs are paired",
    ),
    subject=GapEstimator(),
)


@estimator_claim.obligation("vM KL closed form: E_p sin(theta - a) = 0")
def _vm_sine_moment():
    t, k = sympy.symbols("t kappa", positive=True)
    return Derivation(
        "∫ exp(k cos t) sin t dt over a period = 0, so E_p cos(theta - b) = A(k1) cos(a - b)",
        sympy.Integral(sympy.exp(k * sympy.cos(t)) * sympy.sin(t), (t, -sympy.pi, sympy.pi)),
        sympy.Integer(0),
    )


@estimator_claim.obligation("split-half correction removes the 1/n bias")
def _split_half():
    n, d, b, c = sympy.symbols("n D b c", positive=True)
    expect = lambda m: d + b / m + c / m**2  # noqa: E731
    return Derivation(
        "E[2 D_n - D_{n/2}] = D - 2c/n^2", 2 * expect(n) - expect(n / 2), d - 2 * c / n**2
    )


@estimator_claim.obligation("a vM law smoothed by a vM kernel: the resultant's modulus")
def _convolved_resultant():
    k, c, u = sympy.symbols("kappa c u", positive=True)
    t = sympy.symbols("t", real=True)
    # kappa cos(phi - mu) + c cos(theta - phi) = R cos(phi - psi): R^2 = |kappa e^{i mu} + c e^{i theta}|^2
    lhs = (k * sympy.cos(u) + c * sympy.cos(t)) ** 2 + (k * sympy.sin(u) + c * sympy.sin(t)) ** 2
    return Derivation(
        "|kappa e^{i mu} + c e^{i theta}|^2 = kappa^2 + c^2 + 2 kappa c cos(theta - mu)",
        lhs, k**2 + c**2 + 2 * k * c * sympy.cos(t - u),
    )


@dataclass(frozen=True)
class VonMisesPair:
    kappa1: float
    log_ratio: float  #: log(kappa2 / kappa1)
    offset_fraction: float  #: mean offset as a fraction of the offset giving D_S = 1
    n: int


def _vm_pairs():
    return st.builds(
        VonMisesPair,
        kappa1=st.floats(1.0, 12.0),
        log_ratio=st.floats(-0.25, 0.25),
        offset_fraction=st.floats(0.3, 1.0),
        n=st.sampled_from([1000, 4000]),
    )


def _offset(setting: VonMisesPair) -> float:
    k1, k2 = setting.kappa1, setting.kappa1 * math.exp(setting.log_ratio)

    def ds(delta):
        return float(
            ad.vmf_symmetric_divergence(2, [1.0, 0.0], k1, [math.cos(delta), math.sin(delta)], k2)
        )

    top = math.pi if ds(math.pi) <= 1.0 else optimize.brentq(lambda d: ds(d) - 1.0, 0.0, math.pi)
    return setting.offset_fraction * top


CALIBRATION_EXAMPLES = Profiled(quick=2, full=6)
#: Checked in every profile: concentrations e^0.25 apart, where KL(p||q) and KL(q||p) differ by
#: ~23 % (a bias that confuses the two directions shows only where they differ; the drawn
#: laws may all be nearly symmetric).
ASYMMETRIC_PAIR = VonMisesPair(kappa1=8.0, log_ratio=0.25, offset_fraction=0.6, n=1000)


@estimator_claim.check(
    "S1 KDE at the design bandwidth agrees with the independently computed smoothed divergence",
    settings=_vm_pairs(),
    examples=CALIBRATION_EXAMPLES,
    explicit=(ASYMMETRIC_PAIR,),
)
def s1_calibration(run):
    tests, table = [], []
    decisions = 3 * len(run.settings)
    a, b = run.decision_false_fail_rate(decisions), run.false_pass_rate
    for i, s in enumerate(run.settings):
        k1, k2, delta = s.kappa1, s.kappa1 * math.exp(s.log_ratio), _offset(s)
        # the design, fixed before sampling: bandwidth from the true law and n, targets by
        # quadrature of the closed-form smoothed densities, replicates from the influence s.d.
        conc = ad.vm_oracle_concentration(max(k1, k2), s.n)
        kl_s, kl_s_rev = ad.smoothed_vm_divergence_quad(0.0, k1, delta, k2, conc)
        ds_s = 0.5 * (kl_s + kl_s_rev)
        sd_ds, sd_kl = ad.vm_influence_sd(0.0, k1, delta, k2, s.n, s.n)
        sd_kl_rev = ad.vm_influence_sd(delta, k2, 0.0, k1, s.n, s.n)[1]
        margin_ds = stats.relative_margin(ds_s, run.relative_discrepancy)
        margin_kl = stats.relative_margin(kl_s, run.relative_discrepancy)
        margin_kl_rev = stats.relative_margin(kl_s_rev, run.relative_discrepancy)
        reps = max(
            stats.min_num_samples(INFLUENCE_INFLATION * sd, m, a, b, kind="equivalent")
            for sd, m in ((sd_ds, margin_ds), (sd_kl, margin_kl), (sd_kl_rev, margin_kl_rev))
        )
        gen = run.generator(i)
        x = _von_mises((reps, s.n), 0.0, k1, gen)
        y = _von_mises((reps, s.n), delta, k2, gen)
        rows = max(1, int(1e6 // s.n))  # bounded memory: the full profile asks for thousands
        parts = [run.subject.divergences(x[lo:lo + rows], y[lo:lo + rows], concentration=conc)
                 for lo in range(0, reps, rows)]
        ds = np.concatenate([p[0].cpu().numpy() for p in parts])
        kl = np.concatenate([p[1].cpu().numpy() for p in parts])
        d_true = float(
            ad.vmf_symmetric_divergence(2, [1.0, 0.0], k1, [math.cos(delta), math.sin(delta)], k2)
        )
        note = f"kappa {k1:.3g}/{k2:.3g}, offset {delta:.3g}, n {s.n}, c {conc:.4g}, {reps} replicates"
        m, e = stats.mean_se(ds)
        tests.append(stats.equivalent(f"D_S vs smoothed closed form at n={s.n}", m, e, ds_s,
                                      margin=margin_ds, example=i, df=reps - 1, note=note))
        m, e = stats.mean_se(kl)
        tests.append(stats.equivalent(f"KL(p||q) vs smoothed closed form at n={s.n}", m, e, kl_s,
                                      margin=margin_kl, example=i, df=reps - 1, note=note))
        m, e = stats.mean_se(2 * ds - kl)  # KL(q||p), from the estimator's D_S and KL(p||q)
        tests.append(stats.equivalent(f"KL(q||p) vs smoothed closed form at n={s.n}", m, e,
                                      kl_s_rev, margin=margin_kl_rev, example=i, df=reps - 1,
                                      note=note))
        table.append({
            "kappa1": k1, "kappa2": k2, "offset": delta, "n": s.n, "concentration": conc,
            "replicates": reps, "D_S": d_true, "D_S_smoothed": ds_s, "KL_smoothed": kl_s,
            "smoothing_bias_relative": (ds_s - d_true) / d_true,
            "estimate_bias_relative": float((ds.mean() - ds_s) / ds_s),
            "sd_over_predicted": float(ds.std(ddof=1) / sd_ds),
        })
    run.record("calibration", table)
    return tests


def _von_mises(shape, mean: float, kappa: float, gen: torch.Generator) -> torch.Tensor:
    """vM draws from the run's generator (Best & Fisher's rejection sampler, batched)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.vonmises(mean, kappa, shape), device=gen.device)


@estimator_claim.check(
    "null distribution at the toy law centred at 0 (n = 8000)",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def null_distribution(run):
    setting = run.settings[0]
    replicates = _null_replicates(run, setting, decisions=1)
    values = _null_gaps(setting, replicates, run.seeds[0], run.subject, run.device)
    m, se = stats.mean_se(values)
    margin = _null_margin(run, setting)
    run.record(
        "null",
        {
            "mean": float(m),
            "sd": float(values.std(ddof=1)),
            "q99": float(np.quantile(values, 0.99)),
            "max": float(values.max()),
            "replicates": int(values.size),
            "margin": margin,
        },
    )
    return [
        stats.equivalent(
            "mean D_S of two independent samples of one law", m, se, 0.0, margin=margin,
            df=values.size - 1,
            note=(f"absolute margin {margin:.3g}: {run.relative_discrepancy:.0%} of the inherited "
                  "gap at sigma = 0.2 (the target 0 has no relative size)"),
        )
    ]


def _floor_bound(grid: int = ad.GRID) -> float:
    """A rigorous bound B on |log(p/q)| for the estimator's grid densities, whatever the sample.

    Densities are floored at ``eps log2(grid) * |c_0 lam_0| = eps log2(grid)`` and bounded by
    ``sum_k |c_k lam_k| <= (pi/2)^2 (1 + 2 sum_{k>=1} lam_k(c_max))`` (the de-binning divides by
    sinc^2 >= (2/pi)^2 and lam_k grows with the concentration); B = log(max / floor). Each
    plug-in KL is then at most m B in modulus (m = mean grid density = 1 up to the FFT's
    rounding), so the split-half D_S = (1/2) sum (2 KL - mean of halves) obeys |D_S| <= 3 m B.
    """
    top = (math.pi / 2) ** 2 * float(
        ad._kernel_coefficients(np.array([ad.CONCENTRATIONS.max()]), grid // 2 + 1,
                                torch.zeros(1, dtype=torch.float64, device="cpu")).sum() * 2 - 1
    )
    floor = torch.finfo(torch.float64).eps * math.log2(grid)
    return math.log(top / floor)


@estimator_claim.check(
    "exact identities and the floor's bound on degenerate inputs",
    settings=st.just(0),
    examples=Profiled(quick=1, full=1),
)
def degenerate_inputs(run):
    gen = run.generator(0)
    like = {"dtype": run.dtype, "device": run.device}
    x = 2 * math.pi * torch.rand(2, 500, generator=gen, **like)
    half = math.pi * torch.rand(2, 500, generator=gen, **like)
    cases = {
        "identical samples": (x, x.clone()),
        "disjoint halves (empty regions)": (half, half + math.pi),
        "both collapsed to one angle": (torch.zeros(2, 500, **like), torch.zeros(2, 500, **like)),
        "collapsed to different angles": (torch.zeros(2, 500, **like), torch.ones(2, 500, **like)),
    }
    record, values = {}, {}
    for name, (a, b) in cases.items():
        values[name] = run.subject.divergences(a, b)[0]
        record[name] = {
            "D_S": values[name].tolist(),
            "histogram_jeffreys": ad.histogram_jeffreys(a, b).tolist(),
        }
    bound = _floor_bound()
    record["floor_bound_B"] = bound
    run.record("degenerate_inputs", record)
    tests = [
        # identical inputs give bitwise-identical densities, hence exactly 0.
        stats.within_precision("identical samples give D_S = 0 exactly",
                               float(values["identical samples"].abs().max()), 0.0, 0.0),
        stats.within_precision("samples collapsed to one common angle give D_S = 0 exactly",
                               float(values["both collapsed to one angle"].abs().max()), 0.0, 0.0),
    ]
    for name in ("disjoint halves (empty regions)", "collapsed to different angles"):
        v = values[name]
        # |D_S| <= 3 m B with m <= 1 + 1e-12: the bound 3.01 B (NaN and inf fail)
        tests.append(stats.within_precision(
            f"{name}: |D_S| within the floor's rigorous bound", float(v.abs().max()), 0.0,
            3.01 * bound, note=f"B = log(largest grid density / floor) = {bound:.2f}; |D_S| <= 3 m B"))
    return tests


def _lscv_pairwise(theta: torch.Tensor) -> torch.Tensor:
    """LSCV of the von Mises KDE of ``theta [B, n]`` for every candidate concentration, summed
    pair by pair in O(n^2), written apart from the estimator's binned Fourier form: with kernel
    ``K(t) = exp(c cos t) / I0(c)`` (w.r.t. the uniform probability measure),
    ``int f^2 = n^-2 sum_ij I0(2c |cos((x_i - x_j)/2)|) / I0(c)^2`` and the leave-one-out term
    ``(2 / (n (n - 1))) sum_{i != j} K(x_i - x_j)``."""
    n = theta.shape[-1]
    diff = theta[:, :, None] - theta[:, None, :]
    c = torch.as_tensor(ad.CONCENTRATIONS, dtype=theta.dtype, device=theta.device)[:, None, None, None]
    i0 = torch.special.i0e(c)  # scaled: I0(c) = i0e(c) e^c
    z = 2 * c * torch.cos(diff / 2).abs()
    integral = (torch.special.i0e(z) * torch.exp(z - 2 * c) / i0**2).sum((-2, -1)) / n**2
    kernel = torch.exp(c * (torch.cos(diff) - 1)) / i0
    off_diagonal = kernel.sum((-2, -1)) - kernel.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (integral - 2 * off_diagonal / (n * (n - 1))).T


#: Candidates checked: concentrations up to 1e3 (bandwidth >= 0.03 rad, 20 grid spacings); beyond
#: it the binning error of the grid form grows (2.7e-3 at 1e4, n = 20), and no toy sample picks it.
LSCV_CHECKED = ad.CONCENTRATIONS <= 1e3
#: Stated tolerance, relative to each sample's largest |criterion|: 24x the largest binning error
#: seen over 20 seeds of this design (2.1e-4, median 1.0e-4; 4096 points); normalising the
#: leave-one-out term by n instead of n - 1 errs by >= 6.8e-2 on every one of them.
LSCV_PRECISION = 5e-3
LSCV_SAMPLES, LSCV_SIZE = 16, 32


@estimator_claim.check(
    "cross-validation criterion equals its direct pairwise sum",
    settings=st.just(0),
    examples=Profiled(quick=1, full=1),
)
def cross_validation(run):
    """The bandwidth is chosen by LSCV in Fourier form on the binned grid; the oracle sums the
    same criterion pair by pair from the kernel's closed form (no grid, no FFT)."""
    theta = _von_mises((LSCV_SAMPLES, LSCV_SIZE), 1.0, 4.0, run.generator(0)).to(run.dtype)
    binned = ad.lscv_criterion(theta)
    direct = _lscv_pairwise(theta)
    scale = direct.abs().amax(-1, keepdim=True)
    checked = torch.as_tensor(LSCV_CHECKED, device=run.device)
    error = ((binned - direct).abs() / scale)[:, checked].max().item()
    agree = (binned.argmin(-1) == direct.argmin(-1)).float().mean().item()
    run.record("cross_validation", {"samples": LSCV_SAMPLES, "size": LSCV_SIZE,
                                    "max_relative_error": error, "argmin_agreement": agree})
    return [stats.within_precision(
        "LSCV binned Fourier form vs pairwise sum: max relative error", error, 0.0, LSCV_PRECISION,
        note=(f"{LSCV_SAMPLES} vM(1, 4) samples of {LSCV_SIZE} angles, concentrations <= 1e3; "
              f"stated tolerance {LSCV_PRECISION:g} of the largest |criterion|"))]


estimator_claim.control(
    "raw plug-in without the split-half correction",
    check=null_distribution,
    mutant=GapEstimator(split_half=False),
    description="the plug-in's O(1/n) variance bias (+2.7e-3 at n = 8000) must show",
)


# === claim 2: the authors' sweep ============================================================

trend_claim = Claim(
    id="fig5-gap-grows-with-misalignment",
    reference="Fig. 5, Prop 4.1 (persistent -D_S)",
    statement=(
        "In the authors' toy (independent inits, 8 sigmas x seeds, one batched program), the "
        "embedding-marginal gap D_S(q1, q2) increases with the pair misalignment sigma "
        "(Jonckheere-Terpstra, permutation null, seeds designed for power at a pairwise "
        "ordering probability of 0.70); the Fourier-expanded CLIP gradient that trains the toy "
        "equals autograd of a separately written symmetric CLIP loss; its batched Adam equals "
        "torch.optim.Adam; the toy's samplers match "
        "the angle law's closed-form moments and the wrapped-normal misalignment; the trend "
        "test's permutation p-value equals exact enumeration."
    ),
    assumptions=(
        "the toy of paper Fig. 5; the full profile trains 1000 steps (the gap has settled "
        "by then: see fig5-gap-not-init-artifact's trajectories), the benchmark 2000",
    ),
    subject=Fig5Experiment(),
)


@trend_claim.check(
    "D_S increases with sigma (Jonckheere-Terpstra)",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def authors_trend(run):
    seeds = _trend_seeds(run, 1, MIN_SEEDS_AUTHORS, AUTHORS_TREND_PI)
    sweep = _sweep_for(run, run.subject, seeds, STEPS_AUTHORS)
    final = sweep.gap[-1]
    labels = _labels(run.subject, sweep.sigma)
    jt, test = _trend_test("JT for D_S increasing in sigma", final, labels, run, 1, run.check_seed,
                           note=f"{seeds} seeds per sigma; labels mirrored: "
                                f"{run.subject.reverse_labels}", pi=AUTHORS_TREND_PI)
    run.record(
        "per_sigma",
        _per_sigma_table(
            sweep.sigma,
            {
                "D_S (vM KDE)": final,
                "Jeffreys (authors' 60-bin histogram)": sweep.jeffreys_histogram,
                "paired cosine": sweep.cosine,
                "top-1 of 256": sweep.top1,
            },
        ),
    )
    run.record(
        "near_singular_runs",
        {
            "condition_threshold": SINGULAR_CONDITION,
            "per_sigma": {
                str(s): int((sweep.condition[sweep.sigma == s] > SINGULAR_CONDITION).sum())
                for s in np.unique(sweep.sigma)
            },
            "their_D_S": final[sweep.condition > SINGULAR_CONDITION].tolist(),
        },
    )
    pairs = sum(len(g) * len(h) for k, g in enumerate(_groups(final, labels))
                for h in _groups(final, labels)[k + 1:])
    run.record("jonckheere_terpstra", {"statistic": jt.statistic, "z": jt.z, "p": jt.p_value,
                                       "seeds_per_sigma": seeds,
                                       "pairwise_ordering_estimate": jt.statistic / pairs})
    run.figure(
        "gap vs misalignment (authors' setting)",
        [
            {
                "label": "D_S (vM KDE): median and interquartile band",
                "x": list(SIGMAS),
                **dict(zip(("lower", "y", "upper"), np.transpose(
                    [np.quantile(final[sweep.sigma == s], [0.25, 0.5, 0.75]) for s in SIGMAS]
                ).tolist(), strict=True)),
                "style": "band",
            },
            {
                "label": "median Jeffreys/2 (histogram)",
                "x": list(SIGMAS),
                "y": [
                    float(np.median(sweep.jeffreys_histogram[sweep.sigma == s]) / 2) for s in SIGMAS
                ],
                "style": "points",
            },
        ],
        xlabel="sigma_mis",
        ylabel="D_S",
        yscale="log",
    )
    return [test]


trend_claim.control(
    "sigma labels mirrored (sorted the wrong way)",
    check=authors_trend,
    mutant=replace(Fig5Experiment(), reverse_labels=True),
    description="every run filed under 0.7 - sigma: the gap decreases in the label",
)


def _clip_loss_autograd(w1, w2, x1, x2, tau):
    """The symmetric CLIP loss (mean of the two cross-entropies), written directly with
    logsumexp: the oracle for the Fourier-expanded gradient. Returns the loss per run."""
    def encode(w, x):
        y = torch.einsum("rij,rnj->rni", w, x)
        return y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)

    z1, z2 = encode(w1, x1), encode(w2, x2)
    logits = torch.einsum("rid,rjd->rij", z1, z2) / tau
    diagonal = torch.diagonal(logits, dim1=-2, dim2=-1)
    rows = torch.logsumexp(logits, dim=-1) - diagonal
    cols = torch.logsumexp(logits, dim=-2) - diagonal
    return 0.5 * (rows.mean(-1) + cols.mean(-1))


GRADIENT_RUNS = Profiled(quick=16, full=64)
#: Error budget of the expanded gradient relative to its largest entry over the batch of runs: a
#: stated tolerance, 150x above the largest error seen over 20 seeds (6.6e-8; the expansion
#: drops harmonics below 1e-10 of the largest kernel value, amplified by 1/r_i where a point is
#: far from the other modality, so the error is heavy-tailed; per run, where a run's own
#: gradient is small, it reached 3e-7, recorded) and far below any effect of training (Adam's
#: step changes by < 1e-5 of lr); every gradient bug we tried errs by > 1e-2. The rigorous bound
#: 4 kappa tail / min(r, c) * max |x|/|W x| is recorded: too loose to catch anything.
GRADIENT_PRECISION = 1e-5
EXPANSION_TAIL = 1e-10


@trend_claim.check(
    "Fourier-expanded CLIP gradient equals autograd of the CLIP loss",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def expansion_gradient(run):
    setting = run.settings[0]
    gen = run.generator(0)
    runs = run.pick(GRADIENT_RUNS)
    sigma = run.tensor(setting.sigmas).repeat(runs // len(SIGMAS) + 1)[:runs]
    w = clip_toy.initial_weights(runs, gen)
    x1, x2 = clip_toy.sample_pairs(setting.data(), sigma, setting.batch, gen)
    batch = setting.batch
    uniform = torch.full((runs, batch), 1.0 / batch, dtype=torch.float64, device=run.device)
    expansion = clip_toy.KernelExpansion(setting.tau, tail=run.subject.expansion_tail, device=run.device)
    g1, g2, value = clip_toy._encoder_gradient(
        expansion, w[0], w[1], x1, x2, uniform, uniform, lambda z1, z2: (z2 / batch, z1 / batch)
    )
    a, b = w[0].clone().requires_grad_(), w[1].clone().requires_grad_()
    loss = _clip_loss_autograd(a, b, x1, x2, setting.tau)
    ga, gb = torch.autograd.grad(loss.sum(), (a, b))
    loss = loss.detach()

    def relative(g, ref):  # relative to the largest gradient entry of the batch of runs
        return ((g - ref).abs().max() / ref.abs().max()).item()

    def per_run(g, ref):  # relative to each run's largest entry (recorded)
        return ((g - ref).abs().amax((-2, -1)) / ref.abs().amax((-2, -1))).max().item()

    err1, err2 = relative(g1, ga), relative(g2, gb)
    shifted = value + math.log(batch) + 1 / setting.tau  # J + log B + 1/tau = CLIP loss
    err_value = float(((shifted - loss).abs() / loss.abs()).max())
    with torch.no_grad():  # the rigorous (loose) bound, for the record
        kappa = 1 / setting.tau
        z1, z2 = clip_toy.embed(w[0], x1), clip_toy.embed(w[1], x2)
        k = torch.exp(kappa * (torch.einsum("rid,rjd->rij", z1, z2) - 1))
        smallest = torch.minimum(k.mean(-1).amin(-1), k.mean(-2).amin(-1))
        rigorous = (4 * kappa * EXPANSION_TAIL / smallest).tolist()
    run.record("expansion", {"degree": expansion.degree, "runs": runs, "batch": batch,
                             "relative_error": [err1, err2, err_value],
                             "per_run_relative_error": [per_run(g1, ga), per_run(g2, gb)],
                             "rigorous_bound_without_leverage": rigorous})
    note = (f"{runs} runs x batch {batch}, tau {setting.tau}, {expansion.degree} harmonics; "
            f"budget {GRADIENT_PRECISION:g} of the largest entry (stated tolerance)")
    return [
        stats.within_precision("encoder 1 gradient: max relative error vs autograd", err1, 0.0,
                               GRADIENT_PRECISION, note=note),
        stats.within_precision("encoder 2 gradient: max relative error vs autograd", err2, 0.0,
                               GRADIENT_PRECISION, note=note),
        stats.within_precision("J + log B + 1/tau vs the CLIP loss: max relative error",
                               err_value, 0.0, GRADIENT_PRECISION, note=note),
    ]


trend_claim.control(
    "kernel expansion truncated at 1e-3",
    check=expansion_gradient,
    mutant=replace(Fig5Experiment(), expansion_tail=1e-3),
    description="too few harmonics: the gradient departs from autograd",
)


OPTIMISER_STEPS = 200


@trend_claim.check(
    "the toy's batched Adam equals torch.optim.Adam",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def batched_adam(run):
    """The optimiser that trains every run at once against torch.optim.Adam (the authors'), fed
    the same float64 gradients from the toy's initial weights.

    Bound: per step, Adam's update is at most ``(1 - beta1) / sqrt(1 - beta2) ~ 3.2`` lr; the two
    codes order the same operations differently, so their moments differ by at most ``2 t u`` of
    their terms (``t <= T``, up to 2T u = 400 u for the second moment, 200 u after the square
    root) and the parameter sum by ``u |w|``; summed over T steps the bound below is rigorous up to
    second-order terms. A dropped bias correction or a wrong beta errs by ~lr per step.
    """
    setting = run.settings[0]
    gen = run.generator(0)
    start = clip_toy.initial_weights(run.pick(GRADIENT_RUNS), gen)
    grads = torch.randn((OPTIMISER_STEPS, *start.shape), generator=gen, dtype=start.dtype,
                        device=start.device)
    ours = clip_toy.BatchedAdam(start, setting.lr, run.subject.adam_betas)
    param = torch.nn.Parameter(start.clone())
    reference = torch.optim.Adam([param], lr=setting.lr)
    for g in grads:
        ours.step(g)
        param.grad = g.clone()
        reference.step()
    error = (ours.param - param.detach()).abs().max().item()
    largest = max(start.abs().max().item(), param.detach().abs().max().item())
    bound = OPTIMISER_STEPS * quadrature.UNIT_ROUNDOFF * (2 * largest + 250 * 3.2 * setting.lr)
    run.record("batched_adam", {"steps": OPTIMISER_STEPS, "max_abs_error": error, "bound": bound})
    return [stats.within_precision(
        "batched Adam vs torch.optim.Adam: max |w - w_torch| after the steps", error, 0.0, bound,
        note=f"{OPTIMISER_STEPS} steps of N(0, 1) gradients, lr {setting.lr}, {start.numel()} weights")]


trend_claim.control(
    "Adam with beta2 = 0.99",
    check=batched_adam,
    mutant=replace(Fig5Experiment(), adam_betas=(0.9, 0.99)),
    description="a wrong second-moment decay: the steps depart from the authors' optimiser",
)


@trend_claim.check(
    "the toy's samplers: angle-law moments and the pairs' wrapped-normal misalignment",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def toy_samplers(run):
    """The inverse-CDF sampler against the law's closed-form Fourier moments (Bessel ratios), and
    the pair sampler against E cos(theta2 - theta) = exp(-sigma^2/2) (noise-free inputs)."""
    setting = run.settings[0]
    data = setting.data()
    moments = data.fourier(3)
    misaligned = [s for s in setting.sigmas if s > 0]
    decisions = 2 + len(misaligned)
    a, b = run.decision_false_fail_rate(decisions), run.false_pass_rate
    gen = run.generator(0)
    tests = []
    # cos(k theta) is bounded by 1: s.d. <= 1 is a safe design value
    n_angles = max(stats.min_num_samples(1.0, run.relative_discrepancy * abs(moments[k]), a, b,
                                         kind="equivalent") for k in (1, 2))
    theta = data.sample_angles((n_angles,), gen)
    for k in (1, 2):
        m, se = stats.mean_se(torch.cos(k * theta).cpu().numpy())
        tests.append(stats.equivalent(
            f"E cos({k} theta) of the sampled angle law vs its Bessel closed form", float(m),
            float(se), float(moments[k]),
            margin=stats.relative_margin(moments[k], run.relative_discrepancy),
            note=f"{n_angles} draws"))
    noise_free = replace(data, input_noise=0.0)
    for s in misaligned:
        # the claim is about the misalignment, so the margin is relative to 1 - exp(-sigma^2/2)
        margin = run.relative_discrepancy * (1 - input_pair_cosine(s))
        # cos(sigma Z) is skewed (a long lower tail): its s.d. estimate scatters more than a
        # normal's, so the design adds 20 % to the exact s.d.
        n = stats.min_num_samples(1.2 * input_pair_cosine_sd(s), margin, a, b, kind="equivalent")
        x1, x2 = clip_toy.sample_pairs(noise_free, run.tensor([s]), n, gen)
        m, se = stats.mean_se((x1 * x2).sum(-1)[0].cpu().numpy())
        tests.append(stats.equivalent(
            f"sigma {s}: E cos(theta2 - theta) of the sampled pairs vs exp(-sigma^2/2)", float(m),
            float(se), input_pair_cosine(s), margin=margin,
            note=(f"{n} pairs; margin {run.relative_discrepancy:.0%} of 1 - exp(-sigma^2/2), the "
                  "misalignment itself")))
    return tests


@trend_claim.check(
    "trend test's permutation p-value equals exact enumeration",
    settings=st.just(0),
    examples=Profiled(quick=1, full=1),
)
def trend_test_exactness(run):
    gen = run.generator(0)
    sizes = (2, 2, 3)  # 210 distinct labellings: enumerable
    draws = torch.randn(sum(sizes), generator=gen, dtype=torch.float64, device=run.device).cpu().numpy()
    shift = np.repeat(np.arange(len(sizes)), sizes) * 0.5
    values = np.round(draws + shift, 3)
    groups = np.split(values, np.cumsum(sizes)[:-1])
    j_exact, p_exact = rank_design.jt_exact(groups)
    decisions = 2
    margin = stats.relative_margin(p_exact, run.relative_discrepancy)
    permutations = stats.min_num_samples(
        math.sqrt(p_exact * (1 - p_exact)), margin, run.decision_false_fail_rate(decisions),
        run.false_pass_rate, kind="equivalent")
    jt = stats.jonckheere_terpstra(groups, permutations=permutations, seed=run.check_seed)
    se = math.sqrt(p_exact * (1 - p_exact) / permutations)
    run.record("exact_example", {"groups": [g.tolist() for g in groups], "J": j_exact,
                                 "p_exact": p_exact, "p_permutation": jt.p_value,
                                 "permutations": permutations})
    return [
        stats.within_precision("JT statistic vs brute-force count", jt.statistic, j_exact, 0.0),
        stats.equivalent("JT permutation p-value vs exact enumeration", jt.p_value, se, p_exact,
                         margin=margin, note=f"{permutations} permutations"),
    ]


# === claims 3 and 4: identical initialisation, alignment ====================================

init_claim = Claim(
    id="fig5-gap-not-init-artifact",
    reference=(
        "Fig. 5, abstract ('not an initialization artifact', 'strong pairwise alignment coexists')"
    ),
    statement=(
        "With both encoders started identical, the trained gap D_S still increases with sigma "
        "(Jonckheere-Terpstra), is equivalent to the estimator's null at sigma = 0 (TOST, margin "
        "10 % / 3 % of the inherited gap at sigma = 0.4), is above it for "
        f"sigma >= {GAP_SIGMA} (Mann-Whitney vs the null), and there every run keeps a held-out "
        "mean cosine above the input pairs' own exp(-sigma^2/2), and each sigma's top-1 "
        "retrieval among 256 (mean over its runs) is above chance."
    ),
    assumptions=(
        "identical init gives q1 = q2 at step 0 only at sigma = 0: for sigma > 0 the "
        "input laws differ, so the step-0 gap is the inherited one (recorded)",
    ),
    subject=Fig5Experiment(init="identical"),
)


@init_claim.obligation("pushforward density of a linear circle map: dphi/dtheta = det W / |W u|^2")
def _circle_map_jacobian():
    t = sympy.symbols("theta", real=True)
    a, b, c, d = sympy.symbols("a b c d", real=True)
    y1, y2 = a * sympy.cos(t) + b * sympy.sin(t), c * sympy.cos(t) + d * sympy.sin(t)
    return Derivation(
        "d/dtheta atan2(W u) = det W / |W u|^2",
        sympy.diff(sympy.atan2(y2, y1), t),
        (a * d - b * c) / (y1**2 + y2**2),
    )


@init_claim.obligation("Var cos(sigma Z) = (1 + exp(-2 sigma^2))/2 - exp(-sigma^2), the alignment design")
def _cosine_variance():
    x = sympy.symbols("x", real=True)
    s = sympy.symbols("sigma", positive=True)
    gauss = sympy.exp(-(x**2) / 2) / sympy.sqrt(2 * sympy.pi)
    second = sympy.Integral(sympy.cos(s * x) ** 2 * gauss, (x, -sympy.oo, sympy.oo))
    return Derivation("E cos^2(sigma Z) = (1 + e^{-2 sigma^2})/2", second,
                      (1 + sympy.exp(-2 * s**2)) / 2)


#: decisions of the gap (trend, sigma = 0 vs null, sigma >= 0.4 vs null); one more per run at
#: sigma >= GAP_SIGMA (cosine) and one per such sigma (top-1 pooled over its runs)
GAP_DECISIONS = 3


def _identical_design(run):
    """Seeds per sigma, null replicates, held-out alignment pairs and the decision count of the
    identical-init check, fixed before sampling (the seeds and the count depend on each other:
    the smallest fixed point)."""
    setting = run.settings[0]
    gapped = sum(s >= GAP_SIGMA - 1e-9 for s in setting.sigmas)
    seeds = run.pick(MIN_SEEDS_IDENTICAL)
    while True:
        decisions = GAP_DECISIONS + gapped * (seeds + 1)
        need = _trend_seeds(run, decisions, MIN_SEEDS_IDENTICAL)
        if need <= seeds:
            break
        seeds = need
    margin = run.relative_discrepancy * _inherited_gap(setting, GAP_SIGMA, run.device)
    # sigma = 0 vs null: se^2 = SIGMA0_SD^2/seeds + NULL_SD^2/R must resolve the margin
    a = run.decision_false_fail_rate(decisions)
    need = (margin / stats.min_discrepancy(1.0, a, run.false_pass_rate, kind="equivalent")) ** 2
    room = need - SIGMA0_SD**2 / seeds
    if room <= 0:
        raise ValueError("the sigma = 0 comparison needs more seeds than the trend design")
    replicates = max(math.ceil(NULL_SD**2 / room), _null_replicates(run, setting, 1))
    pairs = _alignment_pairs(run, setting, decisions, seeds)
    return seeds, replicates, margin, pairs, decisions


@init_claim.check(
    "identical init: trend, null at sigma 0, above null and aligned for sigma >= 0.4",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def identical_init(run):
    setting, subject = run.settings[0], run.subject
    seeds, replicates, margin, pairs, decisions = _identical_design(run)
    sweep = _sweep_for(run, subject, seeds, STEPS_IDENTICAL, trajectory=True,
                       alignment_pairs=pairs)
    null = _null_gaps(setting, replicates, run.seeds[0] + 1, subject.estimator, run.device)
    final = sweep.gap[-1]
    labels = _labels(subject, sweep.sigma)
    jt, trend = _trend_test("JT for D_S increasing in sigma", final, labels, run, decisions,
                            run.check_seed, note=f"{seeds} seeds per sigma")
    at_zero = final[np.isclose(labels, 0.0)]
    m0, se0 = stats.mean_se(at_zero)
    mn, sen = stats.mean_se(null)
    gapped = labels >= GAP_SIGMA - 1e-9
    above = stats.mann_whitney(final[gapped], null)
    power = stats.mw_power(int(gapped.sum()), null.size, ABOVE_NULL_PI, run.false_pass_rate)
    tests = [
        trend,
        stats.equivalent(
            "mean D_S at sigma = 0 minus the null's mean", float(m0 - mn),
            float(math.sqrt(se0**2 + sen**2)), 0.0, margin=margin,
            note=(f"{at_zero.size} runs vs {null.size} null replicates; absolute margin "
                  f"{margin:.3g} = {run.relative_discrepancy:.0%} of the inherited gap at sigma = "
                  f"{GAP_SIGMA}: 'not above the null' means no gap of the size the claim calls "
                  "a gap"),
        ),
        stats.demonstrate(
            f"Mann-Whitney: sigma >= {GAP_SIGMA} gaps above the null", above.statistic,
            above.p_value, power=power,
            note=(f"{int(gapped.sum())} runs vs {null.size}; {above.method} p; designed effect "
                  f"P(gap > null) = {ABOVE_NULL_PI}, power {power:.6f} (normal approximation)"),
        ),
    ]
    cosine = sweep.shuffled_cosine if subject.shuffle_pairs else sweep.cosine
    top1 = sweep.shuffled_top1 if subject.shuffle_pairs else sweep.top1
    for r in np.nonzero(labels >= GAP_SIGMA - 1e-9)[0]:
        level = input_pair_cosine(labels[r])
        effect = run.relative_discrepancy * (1 - level)
        tests.append(
            stats.exceeds(
                f"run {r} (sigma {labels[r]}): held-out cosine > exp(-sigma^2/2)",
                cosine[r],
                sweep.cosine_se[r],
                level,
                effect=effect,
                note=(f"{sweep.alignment_pairs} pairs; designed effect {effect:.3g} = "
                      f"{run.relative_discrepancy:.0%} of the alignment the misalignment costs "
                      "(1 - exp(-sigma^2/2))"),
            )
        )
    for level_sigma in SIGMAS:
        if level_sigma < GAP_SIGMA - 1e-9:
            continue
        sel = np.isclose(labels, level_sigma)
        pooled = float(top1[sel].mean())
        pooled_se = float(np.sqrt((sweep.top1_se[sel] ** 2).sum()) / sel.sum())
        tests.append(
            stats.exceeds(
                f"sigma {level_sigma}: top-1 of 256 above chance (mean over {int(sel.sum())} runs)",
                pooled,
                pooled_se,
                CHANCE_TOP1,
                effect=CHANCE_TOP1,
                note=(f"{sweep.alignment_pairs} pairs per run; designed effect: twice chance "
                      f"(1/128); s.e. planned at a top-1 rate of {TOP1_DESIGN_P}"),
            )
        )
    run.record(
        "alignment_per_sigma",
        _per_sigma_table(sweep.sigma, {"paired cosine": cosine, "top-1 of 256": top1}),
    )
    run.record("alignment_pairs", sweep.alignment_pairs)
    steps = list(sweep.steps)
    run.record(
        "per_sigma",
        _per_sigma_table(
            sweep.sigma,
            {
                "D_S final": final,
                "D_S at step 0 (inherited)": sweep.gap[0],
                "Jeffreys (histogram)": sweep.jeffreys_histogram,
            },
        ),
    )
    run.record(
        "data_level_gap_identity_encoders",
        dict(zip(map(str, SIGMAS), _data_level_gap(setting, run.device), strict=True)),
    )
    run.record(
        "null",
        {"mean": float(null.mean()), "sd": float(null.std(ddof=1)), "max": float(null.max()),
         "replicates": int(null.size)},
    )
    run.record("rank_tests", {"trend_z": jt.z, "trend_p": jt.p_value, "gapped_vs_null_z": above.z,
                              "gapped_vs_null_p": above.p_value, "seeds_per_sigma": seeds,
                              "decisions": decisions})
    run.figure(
        "gap trajectories from identical encoders (median over seeds)",
        [
            {
                "label": f"sigma={s}",
                "x": steps,
                "y": [float(np.median(g[sweep.sigma == s])) for g in sweep.gap],
                "style": "line",
            }
            for s in SIGMAS
        ],
        xlabel="step",
        ylabel="D_S",
    )
    return tests


init_claim.control(
    "identical inputs for both modalities",
    check=identical_init,
    mutant=replace(Fig5Experiment(init="identical"), identical_inputs=True),
    description="sigma no longer reaches the inputs: no trend, no gap",
)
init_claim.control(
    "alignment read on mismatched pairs",
    check=identical_init,
    mutant=replace(Fig5Experiment(init="identical"), shuffle_pairs=True),
    description="held-out pairs rolled by one: alignment must fail",
)


# === claim 5: population level ==============================================================

population_claim = Claim(
    id="fig5-population-gap",
    reference="Fig. 5 with Thm 4.1 (large-batch limit J_mm)",
    statement=(
        "Optimising the deterministic J_mm (quadrature over the angle law, no minibatch noise) "
        "for the same encoders (the trainer's J_mm equals a direct quadrature), the optimum's "
        "gap increases with sigma: exactly (quadrature, "
        "every increment above the quadrature error bound) and by the estimator on held-out "
        "samples (Jonckheere-Terpstra); for sigma >= 0.4 it exceeds the smallest gap linear "
        "encoders can reach (the -D_S term keeps a gap)."
    ),
    assumptions=(
        "no input noise at population level (the angle law only)",
        "both encoders start identical; J_mm is rotation invariant, so one start per sigma",
    ),
    subject=Fig5Experiment(init="identical"),
)


@population_claim.obligation(
    "wrapped-normal coupling multiplies Fourier mode k by exp(-k^2 sigma^2/2)"
)
def _wrapped_normal_mode():
    x = sympy.symbols("x", real=True)
    k, s = sympy.symbols("k sigma", positive=True)
    gauss = sympy.exp(-(x**2) / 2) / sympy.sqrt(2 * sympy.pi)
    return Derivation(
        "E cos(k sigma X) = exp(-k^2 sigma^2 / 2)",
        sympy.Integral(sympy.cos(k * s * x) * gauss, (x, -sympy.oo, sympy.oo)),
        sympy.exp(-(k**2) * s**2 / 2),
    )


POPULATION = Profiled(
    quick=dict(points=256, steps=300, pairs=4000, min_steps=100),
    full=dict(points=512, steps=1000, pairs=8000, min_steps=400),
)


@functools.lru_cache(maxsize=2)
def _population(setting: Fig5Setting, points: int, steps: int, min_steps: int, seed: int,
                device: torch.device):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    data = replace(setting.data(), input_noise=0.0)
    like = {"dtype": torch.float64, "device": device}
    sigma = torch.tensor(setting.sigmas, **like)
    weights = clip_toy.initial_weights(sigma.numel(), gen, identical=True)
    final, value = clip_toy.train_population(
        data,
        sigma,
        weights,
        steps=steps,
        grid=clip_toy.PopulationGrid(points=points),
        tau=setting.tau,
        lr=setting.lr,
    )
    # The smallest gap the encoder class allows, searched from the J_mm optimum's relative map
    # (so the search can only go below the optimum's gap).
    relative = torch.linalg.solve(final[0], final[1])
    searched = clip_toy.smallest_gap(data, sigma, relative, steps=min_steps)
    exact, smallest = {}, {}
    eye = torch.eye(2, **like).expand(sigma.numel(), 2, 2)
    for cells in (8192, 16384):  # the difference bounds the quadrature error of the coarser grid
        phi = torch.arange(cells, **like) * (2 * math.pi / cells)
        q1 = clip_toy.pushforward_density(data, final[0], phi)
        q2 = clip_toy.pushforward_density(data, final[1], phi, sigma)
        exact[cells] = clip_toy.symmetric_gap(q1, q2).cpu().numpy()
        smallest[cells] = clip_toy.symmetric_gap(
            clip_toy.pushforward_density(data, eye, phi),
            clip_toy.pushforward_density(data, searched, phi, sigma),
        ).cpu().numpy()
    precision = np.abs(exact[8192] - exact[16384]) + np.abs(smallest[8192] - smallest[16384])
    return final, value.cpu().numpy(), exact[8192], smallest[8192], precision


#: smallest quadrature error bound used (the grids agree to rounding for smooth densities)
QUADRATURE_FLOOR = 1e-12


@population_claim.check(
    "J_mm optimum: gap increases with sigma",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def population_trend(run):
    setting, subject, cfg = run.settings[0], run.subject, run.pick(POPULATION)
    weights, value, exact, smallest, precision = _population(
        setting, cfg["points"], cfg["steps"], cfg["min_steps"], run.seeds[0], run.device
    )
    sigma = np.asarray(setting.sigmas)
    gapped = [i for i, s in enumerate(setting.sigmas) if s >= GAP_SIGMA - 1e-9]
    decisions = 1 + (len(sigma) - 1) + len(gapped)
    # estimator replicates per sigma: the JT design (they add only estimator noise)
    reps = _trend_seeds(run, decisions, Profiled(quick=2, full=2))
    gen = run.generator(0)
    rep_sigma = run.tensor(setting.sigmas).repeat(reps)
    noise_free = replace(setting.data(), input_noise=0.0)
    x1, x2 = clip_toy.sample_pairs(noise_free, rep_sigma, cfg["pairs"], gen)
    w = weights.repeat(1, reps, 1, 1)
    estimate = subject.estimator.divergences(
        clip_toy.embedding_angles(w[0], x1), clip_toy.embedding_angles(w[1], x2), paired=True
    )[0].cpu().numpy()
    labels_raw = rep_sigma.cpu().numpy()
    labels = _labels(subject, labels_raw)
    jt, trend = _trend_test("JT of the estimated gap at the J_mm optimum", estimate, labels, run,
                            decisions, run.check_seed, note=f"{reps} estimator replicates per sigma")
    label_of = _labels(subject, sigma)
    order = np.argsort(label_of, kind="stable")
    increments = np.diff(exact[order])
    bound = np.maximum(precision, QUADRATURE_FLOOR)
    run.record(
        "population",
        {
            "sigma": sigma.tolist(),
            "J_mm": value.tolist(),
            "D_S_exact": exact.tolist(),
            "D_S_smallest_reachable_by_linear_encoders": smallest.tolist(),
            "quadrature_error_bound": precision.tolist(),
            "D_S_estimator_mean": [float(estimate[labels_raw == s].mean()) for s in sigma],
            "condition": torch.linalg.cond(weights).amax(0).tolist(),
            "jt_z": jt.z,
            "replicates": reps,
        },
    )
    deterministic = ("deterministic (quadrature of the trained maps): standard error 0; the bound "
                     "is the quadrature error bound (change under grid refinement)")
    tests = [trend]
    # Deterministic numbers: their only uncertainty is the quadrature error, bounded by the
    # change under grid refinement; each step must exceed it.
    for k, inc in enumerate(increments):
        lo, hi = label_of[order[k]], label_of[order[k + 1]]
        err = float(bound[order[k]] + bound[order[k + 1]])
        tests.append(stats.exceeds(
            f"exact D_S increment from sigma {lo} to {hi}", float(inc), 0.0, err, effect=err,
            note=deterministic))
    # The -D_S term rewards a gap (Prop 4.1): for sigma >= GAP_SIGMA the optimum keeps more
    # gap than the encoders need (the search from the optimum's own map goes lower).
    for i in gapped:
        err = float(bound[i])
        tests.append(stats.exceeds(
            f"sigma {setting.sigmas[i]}: D_S at the J_mm optimum - smallest reachable D_S",
            float(exact[i] - smallest[i]), 0.0, err, effect=err, note=deterministic))
    return tests


def _population_objective(data: clip_toy.ToyData, sigma: torch.Tensor, weights: torch.Tensor,
                          points: int, tau: float) -> torch.Tensor:
    """J_mm (Thm 4.1) at ``weights [2, R, 2, 2]`` on the ``points`` grid, written directly: the data
    law's closed-form density, the wrapped-normal coupling as an explicit kernel matrix (a
    Riemann sum of the normal density over 11 windings), every kernel value exp(kappa(<z, w> - 1))
    formed. The oracle for the trainer's Fourier-expanded, FFT-coupled evaluation."""
    like = {"dtype": torch.float64, "device": weights.device}
    theta = torch.arange(points, **like) * (2 * math.pi / points)
    a = data.density(theta) / points  # [N]
    diff = torch.remainder(theta[:, None] - theta[None, :] + math.pi, 2 * math.pi) - math.pi
    winds = 2 * math.pi * torch.arange(-5, 6, **like)
    values = []
    x = torch.stack([theta.cos(), theta.sin()], -1)
    kappa = 1.0 / tau
    for r, s in enumerate(sigma.tolist()):
        if s == 0.0:
            w = torch.eye(points, **like)
        else:
            u = (diff[..., None] + winds) / s
            w = (torch.exp(-0.5 * u**2).sum(-1) / (s * math.sqrt(2 * math.pi))) * (2 * math.pi / points)
        b = w @ a  # law of theta + sigma N on the grid
        coupling = a[:, None] * w  # P_ij = a_i w(theta_i - theta_j)
        z1 = x @ weights[0, r].T
        z2 = x @ weights[1, r].T
        z1 = z1 / z1.norm(dim=-1, keepdim=True)
        z2 = z2 / z2.norm(dim=-1, keepdim=True)
        cos = z1 @ z2.T
        k = torch.exp(kappa * (cos - 1))
        values.append(-kappa * (coupling * cos).sum()
                      + 0.5 * (a * torch.log(k @ b)).sum() + 0.5 * (b * torch.log(a @ k)).sum())
    return torch.stack(values)


#: relative budget of the trainer's J_mm against the direct quadrature (stated tolerance: the
#: expansion's truncation, 1e-10 of the largest kernel value, amplified by 1/r_i; float64).
POPULATION_VALUE_PRECISION = 1e-6


@population_claim.check(
    "J_mm as the population trainer evaluates it equals a direct quadrature",
    settings=st.just(AUTHORS),
    examples=Profiled(quick=1, full=1),
)
def population_objective(run):
    setting, cfg = run.settings[0], run.pick(POPULATION)
    data = replace(setting.data(), input_noise=0.0)
    sigma = run.tensor(setting.sigmas)
    gen = run.generator(0)
    starts = clip_toy.initial_weights(sigma.numel(), gen)  # independent encoders: P != identity
    optimum = _population(setting, cfg["points"], cfg["steps"], cfg["min_steps"], run.seeds[0],
                          run.device)[0]
    tests, record = [], {}
    for label, weights in (("random maps", starts), ("the J_mm optimum", optimum)):
        # one trainer step returns J_mm at the weights it started from
        _, value = clip_toy.train_population(data, sigma, weights, steps=1,
                                             grid=clip_toy.PopulationGrid(points=cfg["points"]),
                                             tau=setting.tau, lr=setting.lr)
        direct = _population_objective(data, sigma, weights, cfg["points"], setting.tau)
        err = ((value - direct).abs() / direct.abs().clamp(min=1.0)).max().item()
        record[label] = {"trainer": value.tolist(), "direct": direct.tolist(), "relative_error": err}
        tests.append(stats.within_precision(
            f"{label}: max error of the trainer's J_mm relative to max(|J|, 1)", err, 0.0,
            POPULATION_VALUE_PRECISION,
            note=f"{len(setting.sigmas)} sigmas, {cfg['points']} grid points; stated tolerance"))
    run.record("objective", record)
    return tests


population_claim.control(
    "sigma labels mirrored",
    check=population_trend,
    mutant=replace(Fig5Experiment(init="identical"), reverse_labels=True),
    description="every optimum filed under 0.7 - sigma: neither the estimate nor the exact gap "
                "increases in the label",
)

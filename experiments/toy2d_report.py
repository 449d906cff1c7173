"""The paper's 2-D experiments, measured: likelihood, straight trajectories, bridges (issue #6).

Run::

    python -m experiments.toy2d_report --out=reports/toy2d [--steps=N] [--quick]

Methods.

*Models.* Three generative models share one predictor MLP (``--hidden`` wide, 3 hidden
layers) and one training budget (steps, batch 512, Adam(W) 3e-3 decayed linearly to 0,
clipping 1.0, EMA 0.999 evaluated; at 1e-3 the short runs stall on a ring without modes):

- ``vp``: the fixed VP model (VDM / score SDE): linear log-SNR γ from logit(δ²) ≈ −9.21
  to 5, g² = σ²γ' (``vp_matching``), ε-parameterised predictor; config ``toy2d.py:vdm``
  with γ_min moved so that q(z_0 | x) = N(α_0 x, δ²I) matches the decoder's δ, as NFDM's
  does by construction. ``vp_default`` keeps the config's γ_min = −13.3 (σ_0 = 1.3e-3 ≠ δ);
  it is reported for the NELBO only, with the gap this mismatch alone cost (below) before
  issue #9; since then every VP model decodes with its own schedule's σ_0 / α_0 (VDM's
  decoder, ``Model.decoder_fn``), so ``vp_default`` no longer pays it and the bracketed
  "decoder gap" column is the historical cost, not a term of today's bound.
  ``reports/fidelity`` (``experiments/fidelity_report.py``) supersedes this comparison.
- ``nfdm``: NFDM with a learned Gaussian forward process (a second MLP of the same size)
  and a learned volatility (starts at ``volatility.neural_matched``); config ``toy2d.py``.
- ``nfdm_ot``: NFDM-OT, g ≡ 0, velocity matching + λ · curvature; config ``toy2d_ot.py``
  with λ = 0.01 instead of its 0.1, which underfits at this budget (λ = 0 collapses).

All use δ = 0.01 and the continuous convention (Gaussian decoder N(x; z_0, δ²I)).

*Data.* The 8-Gaussians ring of SPEC §1.6 (``eight_gaussians``) and a two-component
correlated Gaussian mixture (``correlated_pair``); both have closed-form densities
(``report_lib.DENSITIES``). Models train on a pool of 2¹⁸ points and are evaluated on
fresh held-out points.

*Likelihood.* The NELBO of ``vp`` and ``nfdm`` (K t-samples per point, stratified per
point) bounds −log p_θ(x) for the model density p_θ = p_θ(z_0) ⊛ N(0, δ²I), a density on
R²; the ODE NLL (exact trace, dopri5) is −log p_0(x) of the deterministic model's density
at the data. Both are cross-entropies E_{p_true}[−log p_model] of a density on R², so
neither can go below the true entropy H = E[−log p_true] (Monte Carlo on held-out points):
the gap to H is KL(p_true ‖ p_model) plus, for the NELBO, the bound's own gap. A decoder
N(x; z_0, δ²) fed by q(z_0 | x) = N(x, σ_0²) adds at least
D · (log(δ/σ_0) + σ_0²/(2δ²) − ½) nats (the KL between q(z_0 | x) and the posterior
≈ N(x, δ²)), 3.11 nats for ``vp_default``. The δ-blur
of the decoder is part of the model density, not a bias; the ring's components
(std 0.35 ≫ δ) are themselves δ-blurs of slightly narrower Gaussians, so H is attainable.

*Straightness.* S = E ∫₀¹ ‖v(z_t, t) − (z_1 − z_0)‖² dt along ODE paths generated from
prior samples (adaptive dopri5, trapezoid over 201 times), and S / E‖z_1 − z_0‖². With
t running from noise to data this is the brief's ‖v − (z_0 − z_1)‖² in reverse time.

*Sample quality vs NFE.* Euler with 1, 2, 4, 8, 16, 100 steps of each model's ODE from
the same prior draws; squared energy distance (V-statistic) to held-out true samples.
Its noise floor is the same distance between two independent true sample sets.

*Bridges (NFBM).* Two moons at x = −4.5 (source, t = 1) → checkerboard at x = +4.5
(target, t = 0), a disc of radius 1 at the origin between them, trained without and with
the obstacle penalty 10 · relu(1 − ‖z_t‖) on forward samples, at peak learning rate 1e-3
(at 3e-3 the bridge loss ends 2–3× higher and the penalty leaves 39 % of paths crossing).
We report the fraction of generated paths (Euler–Maruyama with the learned volatility,
1000 steps) that enter the disc, the same for forward samples, and the energy distance of
the endpoints to the target.
The deterministic bridge ODE (g ≡ 0, 200 Euler steps) is reported as a control only: it
starts from the point z_1 = x_1, so it is a deterministic map of x_1, not the flow of the
bridge's conditional marginals, which the x̂-plug-in drift does not reproduce.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import report_lib as lib
from experiments import toy2d, toy2d_bridge, toy2d_ot
from nfdm_jax import plotting, sampling
from nfdm_jax.data.toy2d import DENSITIES as TOY_DENSITIES
from nfdm_jax.models import Model

MODELS = ("vp", "nfdm", "nfdm_ot")
TRAINED = MODELS + ("vp_default",)
LABELS = {"vp": "VP (fixed)", "nfdm": "NFDM", "nfdm_ot": "NFDM-OT",
          "vp_default": "VP, γ_min = −13.3"}
BRIDGES = ("no_obstacle", "obstacle")
SOURCE_OFFSET, TARGET_OFFSET = (-4.5, 0.0), (4.5, 0.0)
DISC_CENTRE, DISC_RADIUS, OBSTACLE_WEIGHT = (0.0, 0.0), 1.0, 10.0
POOL_SIZE = 2 ** 18
Samples = dict[str, dict[int, np.ndarray]]   # model → NFE → samples [N, 2]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Budget of one report run."""

    steps: int = 3000                 # training steps of every model
    chunk: int = 500                  # steps per jitted dispatch
    batch_size: int = 512
    hidden: int = 128
    lr: float = 3e-3                  # peak learning rate, decayed linearly to 0
    bridge_lr: float = 1e-3           # the same for the bridges (3e-3 fits them worse)
    curvature_weight: float = 0.01    # NFDM-OT λ
    num_eval: int = 4096              # held-out points for the NELBO and the entropy
    num_t_samples: int = 64           # K (t, ε) draws per point in the NELBO
    num_ode: int = 2048               # held-out points for ODE likelihoods
    num_samples: int = 4096           # generated / true samples per energy distance
    floor_repeats: int = 5            # true-vs-true energy distances for the noise floor
    num_paths: int = 1024             # bridge paths checked for disc crossings
    nfes: tuple[int, ...] = (1, 2, 4, 8, 16, 100)
    seed: int = 0


QUICK = Settings(steps=200, chunk=100, num_eval=512, num_t_samples=8, num_ode=256,
                 num_samples=512, floor_repeats=3, num_paths=256)


# --------------------------------------------------------------------------- configs

def model_config(kind: str, s: Settings) -> ml_collections.ConfigDict:
    """The experiment config of ``kind`` (a model of :data:`MODELS` or a bridge of
    :data:`BRIDGES`) with the report's budget."""
    if kind == "vp_default":
        c = toy2d.get_config("vdm")
    elif kind == "vp":
        c = toy2d.get_config("vdm")
        c.model.gamma_min = vp_matched_gamma_min(c.model.delta)
    elif kind == "nfdm":
        c = toy2d.get_config("")
    elif kind == "nfdm_ot":
        c = toy2d_ot.get_config("")
        c.model.curvature_weight = s.curvature_weight
    else:
        c = toy2d_bridge.get_config("")
        c.data.source_offset, c.data.target_offset = SOURCE_OFFSET, TARGET_OFFSET
        c.model.obstacle_centre, c.model.obstacle_radius = DISC_CENTRE, DISC_RADIUS
        c.model.obstacle_weight = OBSTACLE_WEIGHT if kind == "obstacle" else 0.0
    c.seed = s.seed
    c.net.hidden = s.hidden
    c.train.batch_size, c.train.num_steps = s.batch_size, s.steps
    c.optim.lr = s.bridge_lr if kind in BRIDGES else s.lr
    c.optim.schedule, c.optim.end_lr = "polynomial", 0.0
    return c


def vp_matched_gamma_min(delta: float) -> float:
    """γ_min = logit(δ²): then σ_0² = sigmoid(γ_min) = δ², the decoder's variance."""
    return math.log(delta ** 2 / (1.0 - delta ** 2))


def decoder_mismatch_gap(delta: float, gamma_min: float, dim: int = 2) -> float:
    """D · (log(δ/σ_0) + σ_0²/(2δ²) − ½): the NELBO gap of a decoder N(x; z_0, δ²) on
    q(z_0 | x) = N(x, σ_0²), σ_0² = sigmoid(γ_min), for data smooth on the scale δ."""
    sigma0_sq = 1.0 / (1.0 + math.exp(-gamma_min))
    return dim * (math.log(delta) - 0.5 * math.log(sigma0_sq) + sigma0_sq / (2 * delta ** 2) - 0.5)


class Trained:
    """A model, its trained (EMA) parameters, the per-chunk training loss and wall time."""

    def __init__(self, kind: str, s: Settings, pools: dict[str, np.ndarray], key: jax.Array):
        self.config = model_config(kind, s)
        self.model = Model(self.config, (2,))
        start = time.perf_counter()
        self.params, self.losses = lib.fit(
            self.model, self.config, lib.pool_sampler(pools, s.batch_size), key,
            steps=s.steps, chunk=s.chunk)
        self.seconds = time.perf_counter() - start


def train_models(density: str, s: Settings, key: jax.Array) -> dict[str, Trained]:
    """Every model of :data:`TRAINED` on the same pool of ``density``, same budget."""
    pool = {"x": lib.sample_density(density, np.random.default_rng(s.seed), POOL_SIZE)}
    out = {}
    for i, kind in enumerate(TRAINED):
        out[kind] = Trained(kind, s, pool, jax.random.fold_in(key, i))
        print(f"  trained {density}/{kind} in {out[kind].seconds:.1f} s, "
              f"final loss {out[kind].losses[-1]:.3f}", flush=True)
    return out


# --------------------------------------------------------------------------- 2. likelihood

def likelihood_results(density: str, trained: dict[str, Trained], s: Settings,
                       key: jax.Array) -> dict[str, Any]:
    """True entropy, NELBO (both VPs, NFDM) and ODE NLL (:data:`MODELS`) on held-out
    points, nats."""
    rng = np.random.default_rng(s.seed + 1)
    x = lib.sample_density(density, rng, s.num_eval)
    out: dict[str, Any] = {
        "num_points": s.num_eval, "num_t_samples": s.num_t_samples, "num_ode_points": s.num_ode,
        "true_entropy": lib.mean_se(-lib.DENSITIES[density].log_prob(x))._asdict()}
    for kind in ("vp", "vp_default", "nfdm"):
        t = trained[kind]
        terms = lib.nelbo_per_example(t.model, t.params, x, jax.random.fold_in(key, 0),
                                      s.num_t_samples)
        out[f"{kind}_nelbo"] = {**lib.mean_se(terms["total"])._asdict(),
                                **{k: float(np.mean(terms[k])) for k in ("diff", "rec", "prior")}}
    for kind in MODELS:
        nll = lib.ode_nll(trained[kind].model.ode_drift_fn(trained[kind].params), x[:s.num_ode])
        out[f"{kind}_ode_nll"] = lib.mean_se(nll)._asdict()
    default = trained["vp_default"].config.model
    out["vp_default_decoder_gap"] = decoder_mismatch_gap(default.delta, default.gamma_min)
    out["true_entropy_ode_points"] = lib.mean_se(
        -lib.DENSITIES[density].log_prob(x[:s.num_ode]))._asdict()
    return out


# --------------------------------------------------------------------------- 3, 4. ODE paths

def straightness_results(trained: dict[str, Trained], z1: jax.Array) -> dict[str, Any]:
    """:class:`report_lib.Straightness` of each model's ODE from the same prior draws."""
    return {kind: lib.straightness(t.model.ode_drift_fn(t.params), z1)._asdict()
            for kind, t in trained.items()}


def sample_quality_results(trained: dict[str, Trained], s: Settings, z1: jax.Array,
                           key: jax.Array) -> tuple[dict[str, Any], Samples]:
    """Energy distance to held-out ring samples against NFE (Euler), its noise floor, and the
    SDE samplers (Euler–Maruyama, 100 steps) of VP and NFDM for reference; also the samples."""
    truth = lib.sample_density("eight_gaussians", np.random.default_rng(s.seed + 2),
                               s.num_samples)
    floor = lib.energy_noise_floor(lambda r, n: lib.sample_density("eight_gaussians", r, n),
                                   s.num_samples, s.floor_repeats, s.seed + 3)
    samples = {kind: {nfe: lib.euler_samples(t.model.ode_drift_fn(t.params), z1, nfe)
                      for nfe in s.nfes} for kind, t in trained.items()}
    out: dict[str, Any] = {"num_samples": s.num_samples,
                           "noise_floor": {"mean": floor.mean, "std": floor.se},
                           "energy_distance": {}, "energy_distance_sde_100": {}}
    for kind in trained:
        out["energy_distance"][kind] = {f"nfe_{nfe}": lib.energy(samples[kind][nfe], truth)
                                        for nfe in s.nfes}
    for kind in ("vp", "nfdm"):
        t = trained[kind]
        x = lib.sde_samples(t.model, t.params, z1, key, 100)
        out["energy_distance_sde_100"][kind] = lib.energy(x, truth)
    return out, samples


# --------------------------------------------------------------------------- 5. bridges

def bridge_pools(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Target (checkerboard, ``"x"``) and source (two moons, ``"x1"``) samples, shifted."""
    return {"x": (TOY_DENSITIES["checkerboard"](rng, n) + TARGET_OFFSET).astype(np.float32),
            "x1": (TOY_DENSITIES["two_moons"](rng, n) + SOURCE_OFFSET).astype(np.float32)}


def bridge_results(s: Settings, key: jax.Array
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, float]]:
    """Train both bridges; disc-crossing rates of generated (SDE, ODE) and forward paths and
    the endpoints' energy distance to the target. Also returns SDE paths and train times."""
    train_pool = bridge_pools(np.random.default_rng(s.seed + 4), POOL_SIZE)
    held_out = bridge_pools(np.random.default_rng(s.seed + 5), s.num_paths)
    truth = bridge_pools(np.random.default_rng(s.seed + 6), s.num_paths)["x"]
    floor = lib.energy_noise_floor(
        lambda r, n: bridge_pools(r, n)["x"], s.num_paths, s.floor_repeats, s.seed + 7)
    x0, x1 = jnp.asarray(held_out["x"]), jnp.asarray(held_out["x1"])
    out: dict[str, Any] = {"num_paths": s.num_paths,
                           "noise_floor": {"mean": floor.mean, "std": floor.se}}
    paths, seconds = {}, {}
    for i, kind in enumerate(BRIDGES):
        t = Trained(kind, s, train_pool, jax.random.fold_in(key, i))
        seconds[kind] = t.seconds
        print(f"  trained bridge/{kind} in {t.seconds:.1f} s, final loss {t.losses[-1]:.3f}",
              flush=True)
        row = {"forward_entered_disc": lib.entered_disc(
            lib.forward_paths(t.model, t.params, x0, x1, jax.random.fold_in(key, 10), 201),
            DISC_CENTRE, DISC_RADIUS)}
        for name, stochastic, steps in (("sde", True, 1000), ("ode", False, 200)):
            traj = lib.bridge_trajectory(t.model, t.params, x1, jax.random.fold_in(key, 11),
                                         steps, stochastic)
            row[f"{name}_entered_disc"] = lib.entered_disc(traj.zs, DISC_CENTRE, DISC_RADIUS)
            row[f"{name}_endpoint_energy_distance"] = lib.energy(traj.zs[-1], truth)
            finite = np.isfinite(traj.zs[-1]).all(-1)
            row[f"{name}_endpoint_finite_fraction"] = float(np.mean(finite))
            if stochastic:
                paths[kind] = np.asarray(traj.zs)
        out[kind] = row
    return out, paths, seconds


# --------------------------------------------------------------------------- figures

def _figure(rows: int, cols: int, size: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * cols, size * rows))
    FigureCanvasAgg(fig)
    return fig, np.asarray(fig.subplots(rows, cols, squeeze=False))


def _scatter(ax: Axes, points: np.ndarray, title: str, lim: float = 4.5) -> None:
    ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.set_xticks([]), ax.set_yticks([])


def trajectory_figure(trained: dict[str, Trained], z1: jax.Array, path: str,
                      num_paths: int = 48) -> None:
    """The paper's first figure: ODE paths from prior draws (right, t = 1) to data (left,
    t = 0), the first coordinate against t and the paths in the plane, one row per model."""
    fig, axes = _figure(len(trained), 2, 4.0)
    colours = np.linspace(0.0, 1.0, num_paths)
    for row, (kind, t) in zip(axes, trained.items()):
        traj = jax.jit(lambda z: sampling.euler(t.model.ode_drift_fn(t.params), z,
                                                num_steps=100, return_trajectory=True))(
            z1[:num_paths])
        ts, zs = np.asarray(traj.ts), np.asarray(traj.zs)
        for i in range(num_paths):
            colour = matplotlib.colormaps["viridis"](colours[i])
            row[0].plot(ts, zs[:, i, 0], color=colour, lw=0.7)
            row[1].plot(zs[:, i, 0], zs[:, i, 1], color=colour, lw=0.7)
        row[0].set(xlim=(0.0, 1.0), xlabel="t  (data at 0, prior at 1)", ylabel="$z_t[0]$",
                   title=f"{LABELS[kind]}: first coordinate")
        row[1].scatter(zs[-1, :, 0], zs[-1, :, 1], s=10, c="tab:red", marker="x", label="t = 0")
        row[1].scatter(zs[0, :, 0], zs[0, :, 1], s=10, facecolors="none", edgecolors="k",
                       label="t = 1")
        row[1].set(aspect="equal", title=f"{LABELS[kind]}: paths in the plane")
        row[1].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def nfe_figure(samples: Samples, results: dict[str, Any],
               path: str) -> None:
    """Samples of each model (rows) at each NFE (columns), with their energy distances."""
    nfes = sorted(next(iter(samples.values())))
    fig, axes = _figure(len(samples), len(nfes), 2.2)
    for row, (kind, per_nfe) in zip(axes, samples.items()):
        for ax, nfe in zip(row, nfes):
            ed = results["energy_distance"][kind][f"nfe_{nfe}"]
            _scatter(ax, per_nfe[nfe], f"{LABELS[kind]}, NFE {nfe}\nED {ed:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def energy_curve_figure(results: dict[str, Any], path: str) -> None:
    """Energy distance against NFE (log–log) with the true-vs-true noise floor."""
    fig, axes = _figure(1, 1, 4.5)
    ax = axes[0, 0]
    for kind, per_nfe in results["energy_distance"].items():
        nfes = [int(k.split("_")[1]) for k in per_nfe]
        ax.plot(nfes, list(per_nfe.values()), marker="o", label=LABELS[kind])
    floor = results["noise_floor"]
    ax.axhspan(max(floor["mean"] - 2 * floor["std"], 1e-6), floor["mean"] + 2 * floor["std"],
               color="gray", alpha=0.3, label="noise floor (±2 std)")
    ax.set(xscale="log", yscale="log", xlabel="NFE (Euler)", ylabel="energy distance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# --------------------------------------------------------------------------- report

def _fmt(m: dict[str, float]) -> str:
    return f"{m['mean']:.3f} ± {m['se']:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables."""
    lines = ["# 2-D experiments (issue #6)\n",
             f"Settings: `{json.dumps(results['settings'])}`. Wall time: "
             f"{results['runtime_s']['total']:.0f} s.\n",
             "## Likelihood (nats, held-out; mean ± s.e.)\n",
             "| density | true entropy H | VP NELBO | NFDM NELBO | VP (γ_min −13.3) NELBO "
             "[decoder gap] | H on ODE points | VP ODE NLL | NFDM ODE NLL | NFDM-OT ODE NLL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for density, r in results["likelihood"].items():
        lines.append(f"| {density} | {_fmt(r['true_entropy'])} | {_fmt(r['vp_nelbo'])} | "
                     f"{_fmt(r['nfdm_nelbo'])} | {_fmt(r['vp_default_nelbo'])} "
                     f"[{r['vp_default_decoder_gap']:.2f}] | "
                     f"{_fmt(r['true_entropy_ode_points'])} | {_fmt(r['vp_ode_nll'])} | "
                     f"{_fmt(r['nfdm_ode_nll'])} | {_fmt(r['nfdm_ot_ode_nll'])} |")
    lines += ["\nNELBO terms (mean nats):\n", "| density | model | diff | rec | prior |",
              "|---|---|---|---|---|"]
    for density, r in results["likelihood"].items():
        for kind in ("vp", "nfdm", "vp_default"):
            t = r[f"{kind}_nelbo"]
            lines.append(f"| {density} | {LABELS[kind]} | {t['diff']:.3f} | {t['rec']:.3f} | "
                         f"{t['prior']:.4f} |")
    lines += ["\n## Straightness of generated ODE paths (8 Gaussians)\n",
              "| model | S | S / E‖z1 − z0‖² |", "|---|---|---|"]
    for kind, r in results["straightness"].items():
        lines.append(f"| {LABELS[kind]} | {r['s']:.4f} | {r['relative']:.4f} |")
    q = results["sample_quality"]
    nfes = list(next(iter(q["energy_distance"].values())))
    lines += [f"\n## Energy distance to held-out samples vs NFE (Euler; 8 Gaussians, "
              f"{q['num_samples']} samples)\n",
              f"Noise floor (true vs true): {q['noise_floor']['mean']:.4f} ± "
              f"{q['noise_floor']['std']:.4f} (std).\n",
              "| model | " + " | ".join(n.replace("_", " ").upper() for n in nfes) + " |",
              "|---|" + "---|" * len(nfes)]
    for kind, r in q["energy_distance"].items():
        lines.append(f"| {LABELS[kind]} | " + " | ".join(f"{v:.4f}" for v in r.values()) + " |")
    lines.append("\nSDE (Euler–Maruyama, 100 steps): " + ", ".join(
        f"{LABELS[k]} {v:.4f}" for k, v in q["energy_distance_sde_100"].items()) + ".\n")
    b = results["bridge"]
    keys = [k for k in b["no_obstacle"]]
    lines += [f"## NFBM bridges: two moons (x = {SOURCE_OFFSET[0]}) → checkerboard "
              f"(x = {TARGET_OFFSET[0]}), disc r = {DISC_RADIUS} at the origin\n",
              f"{b['num_paths']} paths; endpoint noise floor {b['noise_floor']['mean']:.4f} ± "
              f"{b['noise_floor']['std']:.4f}.\n",
              "| quantity | no obstacle | obstacle penalty |", "|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | {b['no_obstacle'][k]:.4f} | {b['obstacle'][k]:.4f} |")
    lines += ["\n## Training wall time (s)\n", "| run | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["runtime_s"]["train"].items()]
    return "\n".join(lines) + "\n"


def run(out: str, s: Settings) -> dict[str, Any]:
    """Trains every model, measures everything and writes figures and tables into ``out``."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    key = jax.random.key(s.seed)
    results: dict[str, Any] = {"settings": dataclasses.asdict(s),
                               "runtime_s": {"train": {}}, "likelihood": {}}
    ring: dict[str, Trained] = {}
    for d, density in enumerate(lib.DENSITIES):
        print(f"[{time.perf_counter() - start:.0f} s] {density}", flush=True)
        trained = train_models(density, s, jax.random.fold_in(key, d))
        results["runtime_s"]["train"].update(
            {f"{density}/{k}": t.seconds for k, t in trained.items()})
        results["likelihood"][density] = likelihood_results(
            density, trained, s, jax.random.fold_in(key, 10 + d))
        if density == "eight_gaussians":
            ring = {kind: trained[kind] for kind in MODELS}
    print(f"[{time.perf_counter() - start:.0f} s] ODE paths", flush=True)
    z1 = sampling.sample_prior(jax.random.fold_in(key, 20), (s.num_samples, 2))
    results["straightness"] = straightness_results(ring, z1[:1024])
    quality, samples = sample_quality_results(ring, s, z1, jax.random.fold_in(key, 21))
    results["sample_quality"] = quality
    trajectory_figure(ring, z1, os.path.join(out, "trajectories.png"))
    nfe_figure(samples, quality, os.path.join(out, "samples_vs_nfe.png"))
    energy_curve_figure(quality, os.path.join(out, "energy_vs_nfe.png"))
    print(f"[{time.perf_counter() - start:.0f} s] bridges", flush=True)
    results["bridge"], paths, seconds = bridge_results(s, jax.random.fold_in(key, 30))
    results["runtime_s"]["train"].update({f"bridge/{k}": v for k, v in seconds.items()})
    for kind, zs in paths.items():
        plotting.save_trajectories(zs[::10], os.path.join(out, f"bridge_{kind}.png"),
                                   max_paths=96, obstacle=(DISC_CENTRE, DISC_RADIUS),
                                   title=f"NFBM, {kind.replace('_', ' ')} (SDE)", lim=8.0)
    results["runtime_s"]["total"] = time.perf_counter() - start
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results))
    print(f"[{results['runtime_s']['total']:.0f} s] wrote {out}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports/toy2d")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--quick", action="store_true", help="smoke-test budget")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.steps is not None:
        s = dataclasses.replace(s, steps=args.steps, chunk=min(s.chunk, args.steps))
    run(args.out, s)


if __name__ == "__main__":
    main()

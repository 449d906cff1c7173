"""NFDM against the fixed-process baselines at equal budget (issue #9): one command.

Run::

    python -m experiments.fidelity_report --out=reports/fidelity \\
        [--sections=likelihood,nfe,ablation,digits,conditioning] \\
        [--steps=3000] [--seeds=3] [--quick]

Writes ``results.json`` (after every section, so a partial run keeps what it measured),
``results.md`` and figures into ``--out``.

Methods.

*2-D likelihood* (section ``likelihood``). The ring (``eight_gaussians``) and the correlated
pair of ``report_lib.DENSITIES``; every model is its shipped config (``toy2d.py`` and its
variants ``vdm``, ``vdm_learned``, ``frozen``, ``flow_matching``) with the budget below
(MLPs 128 wide, batch 512, ``--steps`` steps of Adam 3e-3 decayed linearly to 0, EMA 0.999
evaluated, global-norm clipping 1.0) and ``model.data_mean`` / ``data_std`` measured on the
training pool. ``--seeds`` seeds train together in one jit (``jax.vmap`` over the seed); a
model's key depends on its name only, so ``--models`` subsets train the same models. Held-out
NELBO (K t-samples per point, ``report_lib.nelbo_per_example``) and exact-trace ODE NLL
(``report_lib.ode_nll``), both minus the true entropy H (Monte Carlo on the same points),
mean ± s.e. over seeds (each seed's value is itself a mean over points), and NFDM minus each
model; the one-sample NELBO estimator's standard deviation (K = 1, over points, t and ε);
and the per-t profile of L_diff's integrand (nats per unit t, on a t-grid) of the seed-0
models on the ring.

*Sample quality vs NFE* (section ``nfe``). NFDM-OT (``toy2d_ot.py``, edm predictor) at each
curvature weight λ of ``Settings.curvature_weights`` against the VP probability-flow ODE,
flow matching and NFDM's ODE (the likelihood section's ring models): Euler with 1, 2, 4, 8
and 64 steps (64: the ODE's own limit) from the same prior draws, squared energy distance
and sliced Wasserstein-2 to held-out ring samples, mean ± s.e. over seeds; straightness
S / E‖z1 − z0‖² and NFDM-OT's mean forward σ(t) of the seed-0 models.

*Ablation* (section ``ablation``): NFDM on the ring, one change at a time from the
default: the paper's predictor, the forward network's time features at scale 1000; and VP
with the edm predictor.

Sections are keyed by their step count (digits: by run), and each invocation merges into
``results.json`` (:func:`merge_results`), so a run at another ``--steps`` or of more
``--models`` adds rows and a rerun replaces exactly its own.

*Digits* (section ``digits``): ``experiments/digits.py`` and its ``frozen``, ``vdm``,
``vdm_learned``, ``flow_matching`` variants (``--digits_variants``; all on the same U-Net and
input features) through ``experiments.run``'s train loop (``nfdm_jax.train.loop``), at the
step counts of ``--digits_steps``, ``--digits_seeds`` seeds each: test BPD of the EMA
parameters with K = 16 t-samples per test image, mean ± s.e. over seeds, NFDM minus each
variant paired by seed, and the seed-0 models' per-t profile of L_diff on the test split.

*Conditioning* (section ``conditioning``): for the seed-0 digits runs of ``--digits_steps``
× ``--digits_variants`` that finished (nothing is trained), how far the learned forward
process has moved from the untrained one that fixes the ``edm`` scalings
(:func:`conditioning_stats`): mean σ(t) of both over the test images, and the std of the
predictor network's input c_in (z − E z) and of its regression target (x − x̂_linear) / c_out
with z drawn from the model's own process (1 and 1 for Gaussian data at the untrained one).

Rows of ``results.json`` measured with knobs since removed (importance-sampled t, per-group
clipping, tracked ``edm`` scalings, the gradient-noise section) still render; they reproduce
at commit ffd2892 (reports/README.md, "What was tried and removed").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import zlib
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import digits, report_lib as lib, toy2d, toy2d_ot
from nfdm_jax import drifts, evaluation, losses, sampling
from nfdm_jax.metrics.sample_distances import sliced_wasserstein
from nfdm_jax.models import Model, Params
from nfdm_jax.train import step as train_step
from nfdm_jax.train import validation

POOL_SIZE = 2 ** 18
LABELS = {"vp": "VP (vdm)", "vdm_learned": "VDM, learned γ", "nfdm": "NFDM",
          "nfdm_frozen": "NFDM :frozen", "flow_matching": "flow matching",
          "nfdm_learned_sigma": "NFDM :learned_sigma (the paper's σ)",
          # Rows of results.json measured with knobs since removed (reproduce at ffd2892).
          "nfdm_learned_sigma_importance": "NFDM :learned_sigma,importance",
          # Rows measured before toy2d.py's flow matching took the paper's predictor.
          "flow_matching_edm": "flow matching, edm predictor (stuck at its start)"}
# model -> (config module, variant, extra edits)
MODELS_2D: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "vp": (toy2d, "vdm", {}),
    "vdm_learned": (toy2d, "vdm_learned", {}),
    "nfdm": (toy2d, "", {}),
    "nfdm_frozen": (toy2d, "frozen", {}),
    "flow_matching": (toy2d, "flow_matching", {}),
    "nfdm_learned_sigma": (toy2d, "learned_sigma", {}),
}
ABLATIONS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    # Measured with the paper's learned σ, the default of the time.
    "nfdm :learned_sigma, paper's predictor": (toy2d, "learned_sigma",
                                               {"model.parameterization": "preconditioned"}),
    "nfdm :learned_sigma, forward time scale 1000": (toy2d, "learned_sigma",
                                                     {"net.forward_time_scale": 1000.0}),
    "vp, edm predictor": (toy2d, "vdm", {"model.parameterization": "edm"}),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int = 3000
    chunk: int = 500
    batch_size: int = 512
    hidden: int = 128
    lr: float = 3e-3
    curvature_weights: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: int = 3
    num_eval: int = 4096
    num_t_samples: int = 32
    num_ode: int = 1024
    num_samples: int = 4096
    nfes: tuple[int, ...] = (1, 2, 4, 8, 64)
    profile_ts: int = 24
    digits_steps: tuple[int, ...] = (2000,)
    digits_seeds: int = 2
    digits_eval_t_samples: int = 16
    digits_variants: tuple[str, ...] = ("", "learned_sigma", "frozen", "vdm", "vdm_learned",
                                        "flow_matching")


QUICK = Settings(steps=100, chunk=50, seeds=2, num_eval=512, num_t_samples=4, num_ode=64,
                 num_samples=512, profile_ts=6, digits_steps=(10,), digits_seeds=1)


# --------------------------------------------------------------------------- training

def make_config(module: Any, variant: str, edits: dict[str, Any], s: Settings,
                pool: np.ndarray) -> ml_collections.ConfigDict:
    c = module.get_config(variant)
    c.unlock()
    c.net.hidden = s.hidden
    c.train.batch_size, c.train.num_steps = s.batch_size, s.steps
    c.optim.lr, c.optim.schedule = s.lr, "polynomial"
    # The edm predictor's statistics, measured on this training pool.
    c.model.data_mean = tuple(float(v) for v in pool.mean(0))
    c.model.data_std = tuple(float(v) for v in pool.std(0))
    for k, v in edits.items():
        group, field = k.split(".")
        c[group][field] = v
    c.lock()
    validation.check_config(c)
    validation.check_model_shape(c, pool.shape[1:])
    return c


class Trained:
    """``seeds`` models trained together (vmap over the seed); params have a leading seed axis."""

    def __init__(self, config: ml_collections.ConfigDict, pool: np.ndarray, s: Settings,
                 key: jax.Array):
        self.config, self.model = config, Model(config, (2,))
        start = time.perf_counter()
        self.params, self.losses = fit_seeds(self.model, config, pool, s, key)
        self.seconds = time.perf_counter() - start

    def seed(self, i: int) -> Params:
        return jax.tree.map(lambda p: p[i], self.params)


def fit_seeds(model: Model, config: ml_collections.ConfigDict, pool: np.ndarray, s: Settings,
              key: jax.Array) -> tuple[Params, np.ndarray]:
    """Trains ``s.seeds`` seeds in one jitted, vmapped ``lax.scan`` per chunk; returns the EMA
    parameters ``[S, ...]`` and the per-chunk mean losses ``[S, chunks]``."""
    sample = lib.pool_sampler({"x": pool}, s.batch_size)
    training = train_step.training(config, model)  # config.train.num_steps = s.steps
    keys = jax.random.split(key, s.seeds)

    def init(k: jax.Array) -> Any:
        k_init, _, k_data = jax.random.split(k, 3)
        return training.init(k_init, sample(k_data))

    def chunk(state: Any, k: jax.Array, i: jax.Array) -> tuple[Any, jax.Array]:
        _, k_train, k_data = jax.random.split(k, 3)
        step = training.step(k_train)
        batches = jax.vmap(sample)(jax.random.split(jax.random.fold_in(k_data, i), s.chunk))
        state, metrics = step(state, batches)
        return state, metrics["loss"]

    state = jax.jit(jax.vmap(init))(keys)
    run = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None)))
    out = []
    for i in range(max(1, s.steps // s.chunk)):
        state, loss = run(state, keys, jnp.asarray(i))
        out.append(loss)
    return state.ema_params, np.asarray(jax.device_get(jnp.stack(out, axis=1)))


# --------------------------------------------------------------------------- measurements

def ot_name(curvature_weight: float) -> str:
    return f"nfdm_ot_{curvature_weight:g}"


def label(name: str) -> str:
    if name.startswith("nfdm_ot_"):
        return f"NFDM-OT λ = {name[len('nfdm_ot_'):]}"
    return LABELS.get(name, name)


def model_index(name: str) -> int:
    """A stable integer for a model's name (its key is folded in from it)."""
    return zlib.crc32(name.encode()) % 1000


def seed_stats(values: list[float]) -> dict[str, Any]:
    """:func:`nfdm_jax.evaluation.mean_se` over seeds, with the per-seed values."""
    mean, se = evaluation.mean_se(values)
    return {"mean": mean, "se": se, "per_seed": [float(v) for v in values]}


def diff_profile(model: Model, params: Params, x: jax.Array, ts: np.ndarray,
                 eps_keys: list[list[jax.Array]]) -> np.ndarray:
    """L_diff's integrand E_{x, ε} ‖f^B − f̂‖² / (2g²) (nats per example per unit t) at each
    fixed t of ``ts`` ``[T]``: its mean over ``x`` ``[N, *D]`` (in the model's convention) and
    over one ε draw per key of ``eps_keys[i]`` at ``ts[i]``; ``[T]``."""
    x = jnp.asarray(x)

    @jax.jit
    def at(t: jax.Array, k: jax.Array) -> jax.Array:
        tt = jnp.full((x.shape[0],), t)
        eps = jax.random.normal(k, x.shape)
        return jnp.mean(losses.diffusion_loss(model.forward_fn(params), model.predictor_fn(params),
                                              model.volatility_fn(params), x, tt, eps))

    return np.asarray([float(np.mean([at(jnp.asarray(t), k) for k in keys]))
                       for t, keys in zip(ts, eps_keys)])


def sigma_profile(model: Model, params: Params, x: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Mean σ(t) of the forward process over ``x``."""
    fwd = model.forward_fn(params)
    f = jax.jit(lambda t: jnp.mean(jnp.exp(fwd(jnp.asarray(x), jnp.full((x.shape[0],), t))[1])))
    return np.asarray([float(f(jnp.asarray(t))) for t in ts])


def likelihood_section(s: Settings, key: jax.Array, models: dict[str, tuple[Any, str, dict]],
                       densities: tuple[str, ...], profiles: bool
                       ) -> tuple[dict[str, Any], dict[str, dict[str, Trained]]]:
    out: dict[str, Any] = {}
    trained_all: dict[str, dict[str, Trained]] = {}
    for d, density in enumerate(densities):
        pool = lib.sample_density(density, np.random.default_rng(100 + d), POOL_SIZE)
        x = lib.sample_density(density, np.random.default_rng(200 + d), s.num_eval)
        entropy = evaluation.mean_se(-lib.DENSITIES[density].log_prob(x))
        entropy_ode = evaluation.mean_se(-lib.DENSITIES[density].log_prob(x[:s.num_ode]))
        res: dict[str, Any] = {"true_entropy": entropy._asdict(),
                               "true_entropy_ode_points": entropy_ode._asdict(), "models": {}}
        trained_all[density] = {}
        for name, (module, variant, edits) in models.items():
            cfg = make_config(module, variant, edits, s, pool)
            # Keyed by the model's name, so that a run of a subset of the models trains
            # each exactly as the full run does.
            t = Trained(cfg, pool, s, jax.random.fold_in(key, 1000 * d + model_index(name)))
            trained_all[density][name] = t
            nelbo, ode, est_std, terms = [], [], [], {"diff": [], "rec": [], "prior": []}
            for i in range(s.seeds):
                k = jax.random.fold_in(key, 7 + i)
                per = lib.nelbo_per_example(t.model, t.seed(i), x, k, s.num_t_samples)
                nelbo.append(float(np.mean(per["total"])) - entropy.mean)
                for name_t in terms:
                    terms[name_t].append(float(np.mean(per[name_t])))
                one = lib.nelbo_per_example(t.model, t.seed(i), x, jax.random.fold_in(k, 1), 1)
                est_std.append(float(np.std(one["total"])))
                nll = lib.ode_nll(t.model.ode_drift_fn(t.seed(i)), x[:s.num_ode])
                ode.append(float(np.mean(nll)) - entropy_ode.mean)
            res["models"][name] = {
                "nelbo_minus_h": seed_stats(nelbo), "ode_nll_minus_h": seed_stats(ode),
                "nelbo_estimator_std": float(np.mean(est_std)),
                "terms": {k: float(np.mean(v)) for k, v in terms.items()},
                "final_train_loss": seed_stats(list(t.losses[:, -1])),
                "train_seconds": t.seconds}
            r = res["models"][name]
            print(f"  {density}/{name}: NELBO−H {r['nelbo_minus_h']['mean']:.3f} ± "
                  f"{r['nelbo_minus_h']['se']:.3f}, ODE−H {r['ode_nll_minus_h']['mean']:.3f} ± "
                  f"{r['ode_nll_minus_h']['se']:.3f} ({t.seconds:.0f} s)", flush=True)
        if profiles and density == "eight_gaussians":
            ts = (np.arange(s.profile_ts) + 0.5) / s.profile_ts
            xp = x[:1024]
            res["diff_profile"] = {"t": ts.tolist()}
            res["sigma_profile"] = {"t": ts.tolist()}
            for name in ("vp", "nfdm", "nfdm_frozen"):
                if name in trained_all[density]:
                    t = trained_all[density][name]
                    res["diff_profile"][name] = diff_profile(
                        t.model, t.seed(0), xp, ts,
                        [[jax.random.fold_in(jax.random.fold_in(key, 99), i)]
                         for i in range(len(ts))]).tolist()
                    res["sigma_profile"][name] = sigma_profile(t.model, t.seed(0), xp, ts).tolist()
        out[density] = res
    return out, trained_all


def nfe_section(s: Settings, key: jax.Array, ring: dict[str, Trained]) -> dict[str, Any]:
    pool = lib.sample_density("eight_gaussians", np.random.default_rng(100), POOL_SIZE)
    ots = {ot_name(lam): Trained(make_config(toy2d_ot, "", {"model.curvature_weight": lam},
                                             s, pool),
                                 pool, s, jax.random.fold_in(key, 1))
           for lam in s.curvature_weights}
    models = {**ots, **{k: ring[k] for k in ("vp", "flow_matching", "nfdm") if k in ring}}
    truth = lib.sample_density("eight_gaussians", np.random.default_rng(300), s.num_samples)
    z1 = sampling.sample_prior(jax.random.fold_in(key, 2), (s.num_samples, 2))
    floor = lib.energy_noise_floor(lambda r, n: lib.sample_density("eight_gaussians", r, n),
                                   s.num_samples, 3, 301)
    sw = jax.jit(lambda k, a, b: sliced_wasserstein(k, a, b))
    out: dict[str, Any] = {"noise_floor_energy": floor._asdict(),
                           "train_seconds": {k: t.seconds for k, t in ots.items()},
                           "energy": {}, "sliced_w": {}, "straightness": {}}
    ts = (np.arange(s.profile_ts) + 0.5) / s.profile_ts
    out["sigma_profile"] = {"t": ts.tolist(), **{
        k: sigma_profile(t.model, t.seed(0), truth[:1024], ts).tolist() for k, t in ots.items()}}
    for name, t in models.items():
        out["energy"][name], out["sliced_w"][name] = {}, {}
        for nfe in s.nfes:
            e, w = [], []
            for i in range(s.seeds):
                samples = lib.euler_samples(t.model.ode_drift_fn(t.seed(i)), z1, nfe)
                e.append(lib.energy(samples, truth))
                w.append(float(sw(jax.random.key(5), jnp.asarray(samples), jnp.asarray(truth))))
            out["energy"][name][str(nfe)] = seed_stats(e)
            out["sliced_w"][name][str(nfe)] = seed_stats(w)
        out["straightness"][name] = lib.straightness(t.model.ode_drift_fn(t.seed(0)),
                                                     z1[:1024])._asdict()
        print(f"  nfe/{name}: " + ", ".join(f"{n}: {out['energy'][name][str(n)]['mean']:.4f}"
                                            for n in s.nfes), flush=True)
    return out


def digits_profile(config: ml_collections.ConfigDict, workdir: str, ts: np.ndarray,
                   num_eps: int = 4) -> list[float]:
    """Mean L_diff integrand (nats per test image per unit t) of the latest checkpoint's EMA
    parameters at each t of ``ts``, averaged over the test split and ``num_eps`` draws of ε."""
    from nfdm_jax.train import loop

    def profile(exp: Any, params: Any, step: int) -> list[float]:
        x = lib.eval_split(exp.model, exp.data.eval["x"])
        # The same ε draws at every t.
        keys = [jax.random.key(i) for i in range(num_eps)]
        return diff_profile(exp.model, params, x, ts, [keys] * len(ts)).tolist()

    return loop.from_latest(config, workdir, "profile", profile)


def digits_run(variant: str, steps: int, seed: int,
               s: Settings) -> tuple[ml_collections.ConfigDict, str]:
    """The config and workdir name of one digits run (``variant`` "" is NFDM itself)."""
    c = digits.get_config(variant)
    c.unlock()
    c.seed = seed
    c.train.num_steps, c.train.eval_every = steps, 0
    c.train.checkpoint_every = steps
    c.train.eval_t_samples = s.digits_eval_t_samples
    c.sample.eval_nfe = ()  # test BPD only: no sample-quality pass
    c.lock()
    validation.check_config(c)
    return c, f"{_label(variant)}_steps{steps}_seed{seed}"


def _finished(workdir: str, steps: int) -> bool:
    return os.path.isdir(os.path.join(workdir, "checkpoints", str(steps)))


def conditioning_stats(model: Model, params: Params, x: jax.Array, ts: np.ndarray,
                       key: jax.Array) -> dict[str, list[float]]:
    """At each t of ``ts``: the mean σ(t) over ``x`` ``[N, *D]`` of the model's forward
    process and of its ``edm`` base (the untrained process), and the std over x and one ε of
    the predictor network's input c_in (z − E z) and regression target (x − x̂_linear) / c_out,
    with z from the model's own process and the base's scalings (:func:`drifts.edm_scalings`)."""
    fwd, base = model.forward_fn(params), model.base_fn(params)
    eps = jax.random.normal(key, x.shape)
    # The edm predictor with its network at 0 is the linear posterior mean.
    linear_mean = drifts.edm_preconditioned(lambda h, t: jnp.zeros_like(x), base,
                                            model.data_mean, model.data_std, ())

    @jax.jit
    def at(t: jax.Array) -> jax.Array:
        tt = jnp.full((x.shape[0],), t)
        mu, log_sigma = fwd(x, tt)
        z = mu + jnp.exp(log_sigma) * eps
        c = drifts.edm_scalings(base, z, tt, model.data_mean, model.data_std)
        linear = linear_mean(z, tt)
        return jnp.stack([jnp.mean(jnp.exp(log_sigma)), jnp.mean(jnp.exp(base(x, tt)[1])),
                          jnp.std(c.c_in * (z - c.offset)), jnp.std((x - linear) / c.c_out)])

    rows = np.asarray([at(jnp.asarray(t)) for t in ts])
    return {k: rows[:, i].tolist() for i, k in
            enumerate(("sigma", "sigma_base", "input_std", "target_std"))}


def _finished_seed0_runs(s: Settings, workroot: str, section: str,
                         skip: Callable[[ml_collections.ConfigDict], Optional[str]]
                         ) -> Iterator[tuple[str, int, ml_collections.ConfigDict, str, str]]:
    """(label, steps, config, name, workdir) of the finished seed-0 digits runs of
    ``--digits_steps`` × ``--digits_variants``; ``skip(config)`` gives a reason to leave one
    out (printed), or None."""
    for steps in s.digits_steps:
        for variant in s.digits_variants:
            c, name = digits_run(variant, steps, 0, s)
            workdir = os.path.join(workroot, name)
            why = skip(c) or (None if _finished(workdir, steps)
                              else f"no finished run in {workdir}")
            if why:
                print(f"  {section}/{name}: {why}, skipped")
                continue
            yield _label(variant), steps, c, name, workdir


def _label(variant: str) -> str:
    """A digits variant as the tables name it: ``""`` is NFDM, ``,`` composes as ``+``."""
    return (variant or "nfdm").replace(",", "+")


def conditioning_section(s: Settings, workroot: str) -> dict[str, Any]:
    from nfdm_jax.train import loop

    ts = np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.9])
    out: dict[str, Any] = {}

    def not_edm(c: ml_collections.ConfigDict) -> Optional[str]:
        return None if c.model.parameterization == "edm" else "not an edm predictor"

    for label_, steps, c, name, workdir in _finished_seed0_runs(s, workroot, "conditioning",
                                                                not_edm):
        def probe(exp: Any, params: Any, step: int) -> dict[str, list[float]]:
            source = exp.data.eval["x"]
            x = exp.model.preprocess(
                jnp.asarray(source.take(np.arange(len(source)))["x"]), jax.random.key(0))
            return conditioning_stats(exp.model, params, x, ts, jax.random.key(1))

        out[name] = {"variant": label_, "steps": steps, "t": ts.tolist(),
                     **loop.from_latest(c, workdir, "probe", probe)}
    return out


def digits_section(s: Settings, workroot: str) -> dict[str, Any]:
    from nfdm_jax.train import loop

    out: dict[str, Any] = {}
    ts = (np.arange(s.profile_ts) + 0.5) / s.profile_ts
    for steps in s.digits_steps:
        for variant in s.digits_variants:
            for seed in range(s.digits_seeds):
                c, name = digits_run(variant, steps, seed, s)
                workdir = os.path.join(workroot, name)
                # A run finished by an earlier invocation is not retrained: its time is
                # None here, and save() keeps the one recorded then.
                done = _finished(workdir, steps)
                start = time.perf_counter()
                loop.train(c, workdir)
                train_s = None if done else time.perf_counter() - start
                m = loop.run_eval(c, workdir)
                out[name] = {"variant": _label(variant), "steps": steps, "seed": seed,
                             "bpd": m["bpd"], "bpd_stderr": m["bpd_stderr"],
                             "train_seconds": train_s, "eval_t_samples": s.digits_eval_t_samples,
                             "load_avg": os.getloadavg()[0],
                             "command": ("python -m experiments.run --config=experiments/digits.py"
                                         + (f":{variant}" if variant else "")
                                         + f" --workdir=DIR --config.seed={seed}"
                                         f" --config.train.num_steps={steps}"
                                         " --config.train.eval_every=0"
                                         f" --config.train.checkpoint_every={steps}"
                                         f" --config.train.eval_t_samples={s.digits_eval_t_samples}"
                                         " --config.sample.eval_nfe='()'"
                                         " && python -m experiments.run ... --mode=eval")}
                if seed == 0:
                    out[name]["t"] = ts.tolist()
                    out[name]["diff_profile"] = digits_profile(c, workdir, ts)
                print(f"  digits/{name}: {m['bpd']:.3f} ± {m['bpd_stderr']:.3f} bits/dim "
                      f"({'trained before' if train_s is None else f'{train_s:.0f} s'})",
                      flush=True)
    return out


def _most_profiled_steps(profiled: list[dict[str, Any]]) -> int:
    """The step count with the most profiled variants (the largest on a tie)."""
    counts: dict[int, int] = {}
    for r in profiled:
        counts[r["steps"]] = counts.get(r["steps"], 0) + 1
    return max(counts, key=lambda k: (counts[k], k))


def digits_summary(runs: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs grouped by (variant, steps): test BPD mean ± s.e. over seeds, seconds, runs."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs.values():
        groups.setdefault((r["variant"], r["steps"]), []).append(r)
    out = {}
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out[key] = {**seed_stats([r["bpd"] for r in rs]), "runs": rs,
                    "seconds": float(np.mean([r["train_seconds"] for r in rs
                                              if r["train_seconds"] is not None] or [np.nan]))}
    return out


# --------------------------------------------------------------------------- output

def _fmt(r: dict[str, Any], sign: str = "") -> str:
    """A :func:`seed_stats` record as "mean ± s.e.", or "mean (1 seed)" without an s.e."""
    if len(r["per_seed"]) < 2:
        return f"{r['mean']:{sign}.3f} (1 seed)"
    return f"{r['mean']:{sign}.3f} ± {r['se']:.3f}"


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """a − b, paired by seed (seed i of every model is evaluated on the same points and
    keys): mean ± s.e. of the per-seed differences."""
    return _fmt(seed_stats(list(np.subtract(a["per_seed"], b["per_seed"]))), "+")


def _by_steps(section: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A steps-keyed section's entries, fewest steps first."""
    return sorted(section.items(), key=lambda kv: int(kv[0]))


def _ordered(models: dict[str, Any]) -> list[tuple[str, Any]]:
    """Models in ``MODELS_2D``'s order (whichever invocation trained them), then the rest."""
    order = list(MODELS_2D)
    return sorted(models.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                  else len(order), kv[0]))


def markdown(res: dict[str, Any]) -> str:
    lines = ["# NFDM vs fixed processes at equal budget (issue #9)\n",
             "Commands: " + "; ".join(f"`{c}`" for c in res["commands"])
             + f". Settings (last command): `{json.dumps(res['settings'])}`.\n"]
    for steps, by_density in _by_steps(res.get("likelihood", {})):
        lines += [f"## 2-D likelihood at {steps} steps: held-out NELBO − H and ODE NLL − H "
                  "(nats; mean ± s.e. over seeds)\n",
                  "| density | model | NELBO − H | ODE NLL − H | 1-sample NELBO std | diff / rec / "
                  "prior | train s |", "|---|---|---|---|---|---|---|"]
        for density, r in by_density.items():
            for name, m in _ordered(r["models"]):
                t = m["terms"]
                lines.append(f"| {density} | {label(name)} | {_fmt(m['nelbo_minus_h'])} | "
                             f"{_fmt(m['ode_nll_minus_h'])} | {m['nelbo_estimator_std']:.2f} | "
                             f"{t['diff']:.3f} / {t['rec']:.3f} / {t['prior']:.4f} | "
                             f"{m['train_seconds']:.0f} |")
        lines += ["\nNFDM minus each model, paired by seed (mean ± s.e. of the per-seed "
                  "differences; negative: NFDM better)\n",
                  "| density | NFDM − model | NELBO | ODE NLL |", "|---|---|---|---|"]
        for density, r in by_density.items():
            ours = r["models"].get("nfdm")
            for name, m in _ordered(r["models"]):
                if ours is None or name == "nfdm":
                    continue
                lines.append(f"| {density} | {label(name)} | "
                             f"{_diff(ours['nelbo_minus_h'], m['nelbo_minus_h'])} | "
                             f"{_diff(ours['ode_nll_minus_h'], m['ode_nll_minus_h'])} |")
        ring = by_density.get("eight_gaussians", {})
        if "diff_profile" in ring:
            p = ring["diff_profile"]
            names = [k for k in p if k != "t"]
            lines += [f"\n### Per-t profile of L_diff's integrand on the ring ({steps} steps, "
                      "seed 0; nats per unit t) and mean σ(t)\n",
                      "| t | " + " | ".join(f"{label(n)} L_diff" for n in names) + " | "
                      + " | ".join(f"{label(n)} σ" for n in names) + " |",
                      "|---|" + "---|" * (2 * len(names))]
            for i, t in enumerate(p["t"]):
                lines.append(f"| {t:.3f} | " + " | ".join(f"{p[n][i]:.3f}" for n in names) + " | "
                             + " | ".join(f"{ring['sigma_profile'][n][i]:.3f}" for n in names)
                             + " |")
    for steps, by_density in _by_steps(res.get("ablation", {})):
        lines += [f"\n## Ablation on the ring at {steps} steps (one change at a time from "
                  "NFDM :learned_sigma, the default when it ran)\n",
                  "| variant | NELBO − H | ODE NLL − H | train s |", "|---|---|---|---|"]
        base = res.get("likelihood", {}).get(steps, {}).get("eight_gaussians", {}).get("models", {})
        for name in ("nfdm_learned_sigma", "vp"):
            if name in base:
                m = base[name]
                lines.append(f"| {label(name)} | {_fmt(m['nelbo_minus_h'])} | "
                             f"{_fmt(m['ode_nll_minus_h'])} | {m['train_seconds']:.0f} |")
        for name, m in by_density["eight_gaussians"]["models"].items():
            lines.append(f"| {name} | {_fmt(m['nelbo_minus_h'])} | {_fmt(m['ode_nll_minus_h'])} | "
                         f"{m['train_seconds']:.0f} |")
    for steps, q in _by_steps(res.get("nfe", {})):
        nfes = list(next(iter(q["energy"].values())))
        f = q["noise_floor_energy"]
        lines += [f"\n## Ring samples vs NFE (Euler; models trained {steps} steps): energy "
                  f"distance / sliced W2 (mean ± s.e. over seeds); noise floor {f['mean']:.4f} "
                  f"(std {f['se']:.4f})\n",
                  "| model | " + " | ".join(f"NFE {n}" for n in nfes) + " | straightness S/E‖Δ‖² |",
                  "|---|" + "---|" * (len(nfes) + 1)]
        for name in q["energy"]:
            cells = [f"{q['energy'][name][n]['mean']:.4f} ± {q['energy'][name][n]['se']:.4f} / "
                     f"{q['sliced_w'][name][n]['mean']:.3f}" for n in nfes]
            lines.append(f"| {label(name)} | " + " | ".join(cells)
                         + f" | {q['straightness'][name]['relative']:.4f} |")
        p = q.get("sigma_profile")
        if p:
            names = [k for k in p if k != "t"]
            lines += [f"\nNFDM-OT's mean forward σ(t) on the ring (seed 0, {steps} steps)\n",
                      "| t | " + " | ".join(label(n) for n in names) + " |",
                      "|---|" + "---|" * len(names)]
            for i, t in enumerate(p["t"]):
                lines.append(f"| {t:.3f} | " + " | ".join(f"{p[n][i]:.4f}" for n in names) + " |")
    if "digits" in res:
        lines += ["\n## Digits: test BPD (K t-samples per test image)\n",
                  "Mean ± s.e. over seeds; per seed: test BPD ± s.e. over images × t. "
                  "Train s: wall time of training (compile included) at the load average "
                  "recorded in results.json.\n",
                  "| variant | steps | test BPD (seeds) | per seed | train s |",
                  "|---|---|---|---|---|"]
        summary = digits_summary(res["digits"])
        for (variant, steps), g in summary.items():
            per_seed = "; ".join(f"{r['bpd']:.3f} ± {r['bpd_stderr']:.3f}" for r in
                                 sorted(g["runs"], key=lambda r: r["seed"]))
            lines.append(f"| {variant} | {steps} | {_fmt(g)} | "
                         f"{per_seed} | "
                         + ("not recorded" if np.isnan(g["seconds"]) else f"{g['seconds']:.0f}")
                         + " |")
        lines += ["\nPaired by seed (same data order and test keys), NFDM at each step count "
                  "minus each other variant at the same steps; negative: NFDM better.\n",
                  "| steps | NFDM − variant | mean ± s.e. over seeds | per seed |",
                  "|---|---|---|---|"]
        for (variant, steps), g in summary.items():
            ref = summary.get(("nfdm", steps))
            if variant == "nfdm" or ref is None:
                continue
            ours = {r["seed"]: r["bpd"] for r in ref["runs"]}
            d = [ours[r["seed"]] - r["bpd"] for r in g["runs"] if r["seed"] in ours]
            if d:
                lines.append(f"| {steps} | {variant} | {_fmt(seed_stats(d), '+')} | "
                             + "; ".join(f"{v:+.3f}" for v in d) + " |")
        profiled = [r for r in res["digits"].values() if "diff_profile" in r]
        if profiled:
            steps = _most_profiled_steps(profiled)
            rows = [r for r in profiled if r["steps"] == steps]
            lines += [f"\n### Per-t profile of L_diff's integrand on the digits test split "
                      f"(seed 0, {steps} steps; nats per image per unit t)\n",
                      "| t | " + " | ".join(r["variant"] for r in rows) + " |",
                      "|---|" + "---|" * len(rows)]
            for i, t in enumerate(rows[0]["t"]):
                lines.append(f"| {t:.3f} | " + " | ".join(f"{r['diff_profile'][i]:.2f}"
                                                          for r in rows) + " |")
    if res.get("conditioning"):
        lines += _conditioning_table(res["conditioning"])
    if res.get("gradient_noise"):
        lines += _gradient_noise_table(res["gradient_noise"])
    return "\n".join(lines) + "\n"


def _gradient_noise_table(runs: dict[str, Any]) -> list[str]:
    lines = ["\n## Noise of the training gradient (digits, seed 0, batches of 32 of the "
             "training split)\n",
             "Per trained group at the final parameters (online, not EMA): noise E‖g − ḡ‖² / "
             "signal ‖ḡ‖² (less its sampling bias; ≤ 0: not measurable) over 96 gradients, t "
             "uniform and importance-sampled (`model.t_sampling`, a density from 64 uniform "
             "batches of 128).\n",
             "| run | group | uniform: noise / signal | importance: noise / signal | "
             "noise ratio |", "|---|---|---|---|---|"]
    for r in sorted(runs.values(), key=lambda r: (r["variant"], r["steps"])):
        loss = r["groups"].get("loss")
        if loss:
            lines.append(f"| {r['variant']}, {r['steps']} steps | batch loss std | "
                         f"{loss['uniform_std']:.3g} | {loss['importance_std']:.3g} | |")
        for group, v in r["groups"].items():
            if group == "loss":
                continue
            lines.append(f"| {r['variant']}, {r['steps']} steps | {group} | "
                         f"{v['uniform_noise']:.3g} / {v['uniform_signal']:.3g} | "
                         f"{v['importance_noise']:.3g} / {v['importance_signal']:.3g} | "
                         f"{v['uniform_noise'] / v['importance_noise']:.2f} |")
    return lines


def _conditioning_table(runs: dict[str, Any]) -> list[str]:
    ts = next(iter(runs.values()))["t"]
    lines = ["\n## The edm predictor's conditioning as the forward process learns "
             "(digits test split, seed 0)\n",
             "σ: mean forward σ(t) of the model / of the untrained process that fixes the edm "
             "scalings. std: of the network's input c_in (z − E z) / of its regression target "
             "(x − x̂_linear) / c_out, z from the model's own process (1 / 1 for Gaussian data "
             "at the untrained process).\n",
             "| run | | " + " | ".join(f"t = {t:g}" for t in ts) + " |",
             "|---|---|" + "---|" * len(ts)]
    for r in sorted(runs.values(), key=lambda r: (r["variant"], r["steps"])):
        run = f"{r['variant']}, {r['steps']} steps"
        lines.append(f"| {run} | σ | " + " | ".join(
            f"{a:.4f} / {b:.4f}" for a, b in zip(r["sigma"], r["sigma_base"])) + " |")
        lines.append(f"| {run} | std | " + " | ".join(
            f"{a:.2f} / {b:.2f}" for a, b in zip(r["input_std"], r["target_std"])) + " |")
    return lines


def figures(res: dict[str, Any], out: str) -> None:
    profiled = [(steps, r["eight_gaussians"]) for steps, r in _by_steps(res.get("likelihood", {}))
                if "diff_profile" in r.get("eight_gaussians", {})]
    if profiled:
        steps, ring = profiled[-1]
        fig = Figure(figsize=(9, 3.5))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        for name, v in ring["diff_profile"].items():
            if name != "t":
                ax1.plot(ring["diff_profile"]["t"], v, marker="o", ms=3, label=label(name))
                ax2.plot(ring["sigma_profile"]["t"], ring["sigma_profile"][name], label=label(name))
        ax1.set(yscale="log", xlabel="t", ylabel="L_diff integrand (nats)",
                title=f"ring, seed 0, {steps} steps")
        ax2.set(xlabel="t", ylabel="mean σ(t)", yscale="log", title="forward σ(t)")
        ax1.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "loss_vs_t.png"), dpi=80)
    for steps, q in _by_steps(res.get("nfe", {}))[-1:]:
        fig = Figure(figsize=(4.5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for name, per in q["energy"].items():
            n = [int(k) for k in per]
            ax.errorbar(n, [per[k]["mean"] for k in per], [per[k]["se"] for k in per],
                        marker="o", label=label(name))
        ax.set(xscale="log", yscale="log", xlabel="NFE (Euler)", ylabel="energy distance",
               title=f"ring, {steps} steps")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "energy_vs_nfe.png"), dpi=80)
    profiled = [r for r in res.get("digits", {}).values() if "diff_profile" in r]
    if profiled:
        steps = _most_profiled_steps(profiled)
        fig = Figure(figsize=(4.5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for r in profiled:
            if r["steps"] == steps:
                ax.plot(r["t"], r["diff_profile"], marker="o", ms=3, label=r["variant"])
        ax.set(yscale="log", xlabel="t", ylabel="L_diff integrand (nats / image)",
               title=f"digits test split, seed 0, {steps} steps")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "digits_loss_vs_t.png"), dpi=80)


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` merged into ``old`` recursively: dicts merge key by key, other values replace,
    except that a ``None`` in ``new`` keeps ``old``'s value (a digits run finished by an
    earlier invocation reports its training time as None). So a run of some models, densities
    or step counts adds to or replaces exactly those entries."""
    out = dict(old)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            out[k] = merge_results(old[k], v)
        elif v is not None or k not in old:
            out[k] = v
    return out


def save(res: dict[str, Any], out: str) -> None:
    """Merges ``res`` into ``out/results.json`` (:func:`merge_results`: what other invocations
    measured stays), then rewrites the markdown and figures from the merged results."""
    path = os.path.join(out, "results.json")
    merged = json.load(open(path)) if os.path.exists(path) else {}
    commands = merged.get("commands", [])
    merged = merge_results(merged, res)
    merged["commands"] = sorted(set(commands + [res["command"]]))
    with open(path, "w") as f:
        json.dump(merged, f, indent=2)
    render(out)


def render(out: str) -> None:
    """Rewrites ``out/results.md`` and the figures from ``out/results.json``."""
    res = json.load(open(os.path.join(out, "results.json")))
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(res))
    figures(res, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports/fidelity")
    parser.add_argument("--sections", default="likelihood,nfe,ablation,digits,conditioning",
                        help="comma-separated; empty: only rewrite results.md and the figures "
                             "from results.json")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--digits_steps", default=None, help="comma-separated step counts")
    parser.add_argument("--digits_workdir", default="/tmp/fidelity_digits")
    parser.add_argument("--digits_seeds", type=int, default=None)
    parser.add_argument("--digits_variants", default=None,
                        help="comma-separated digits.py variants; 'nfdm' is the config "
                             "itself, '+' composes (frozen+learned_sigma)")
    parser.add_argument("--curvature_weights", default=None,
                        help="comma-separated NFDM-OT curvature weights λ (section nfe)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None, help="comma-separated subset of the 2-D models")
    parser.add_argument("--densities", default=None, help="comma-separated subset of densities")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.steps is not None:
        s = dataclasses.replace(s, steps=args.steps, chunk=min(s.chunk, args.steps))
    if args.seeds is not None:
        s = dataclasses.replace(s, seeds=args.seeds)
    if args.digits_steps:
        s = dataclasses.replace(s, digits_steps=tuple(int(v) for v in args.digits_steps.split(",")))
    if args.curvature_weights:
        s = dataclasses.replace(s, curvature_weights=tuple(
            float(v) for v in args.curvature_weights.split(",")))
    if args.digits_seeds is not None:
        s = dataclasses.replace(s, digits_seeds=args.digits_seeds)
    if args.digits_variants:
        s = dataclasses.replace(s, digits_variants=tuple(
            "" if v == "nfdm" else v.replace("+", ",")
            for v in args.digits_variants.split(",")))
    if not args.sections:
        render(args.out)
        return
    os.makedirs(args.out, exist_ok=True)
    res: dict[str, Any] = {"settings": dataclasses.asdict(s)}
    res["command"] = "python -m experiments.fidelity_report " + " ".join(argv or [])
    key = jax.random.key(0)
    sections = args.sections.split(",")
    start = time.perf_counter()
    ring: dict[str, Trained] = {}
    if "likelihood" in sections:
        models = ({k: MODELS_2D[k] for k in args.models.split(",")} if args.models
                  else MODELS_2D)
        densities = tuple(args.densities.split(",")) if args.densities else tuple(lib.DENSITIES)
        res["likelihood"], trained = likelihood_section(s, key, models, densities,
                                                        profiles=True)
        res["likelihood"] = {str(s.steps): res["likelihood"]}
        ring = trained.get("eight_gaussians", {})
        save(res, args.out)
    if "nfe" in sections:
        if not ring:
            _, trained = likelihood_section(s, key, {k: MODELS_2D[k] for k in
                                                     ("vp", "nfdm", "flow_matching")},
                                            ("eight_gaussians",), profiles=False)
            ring = trained["eight_gaussians"]
        res["nfe"] = {str(s.steps): nfe_section(s, jax.random.fold_in(key, 5), ring)}
        save(res, args.out)
    if "ablation" in sections:
        ablation, _ = likelihood_section(s, jax.random.fold_in(key, 6), ABLATIONS,
                                         ("eight_gaussians",), profiles=False)
        res["ablation"] = {str(s.steps): ablation}
        save(res, args.out)
    if "digits" in sections:
        res["digits"] = digits_section(s, args.digits_workdir)
        save(res, args.out)
    if "conditioning" in sections:
        res["conditioning"] = conditioning_section(s, args.digits_workdir)
        save(res, args.out)
    print(f"[{time.perf_counter() - start:.0f} s] wrote {args.out}", flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])

"""Few-step sampling on the 2-D ring (issue 21): energy distance to the data against NFE.

Run::

    python -m experiments.few_step_report --models=vp,flow_matching,nfdm,nfdm_ot \\
        --steps=6000 --seeds=3 [--edit=nfdm_ot:model.curvature_weight=1.0] [--tag=NAME]

Every model is its shipped config (``toy2d.py`` and its ``vdm`` and ``flow_matching``
variants, ``toy2d_ot.py``) at the fidelity report's 2-D budget (MLPs 128 wide, batch 512,
Adam 3e-3 decayed linearly to 0 over ``--steps``, EMA 0.999; ``--seeds`` seeds trained
together under ``jax.vmap``), with ``--edit`` overrides per model. Each seed's EMA model
samples its probability-flow ODE (g ≡ 0) from the same 4096 prior draws with Euler and Heun
at each NFE of ``--nfes``, on the uniform grid and the ρ-grids of ``--rhos``
(``sampling.time_grid``); the squared energy distance to 4096 held-out ring samples is
averaged over seeds (± standard error). Also recorded: the fraction of samples within 3
standard deviations of a mode, the held-out NELBO (nats, K = 8 t-samples per point), the
mean forward σ(t), the ODE's curvature E‖d²z/dt²‖² at fixed t, and the training time. One
JSON line per model is appended to ``--out``/runs.jsonl, with the command that produced it.

``--digits=LABEL:VARIANT:WORKDIR,...`` instead draws the figure of digit samples against NFE
(``--out``/digits_samples_vs_nfe.png): one row block per trained ``experiments/digits.py``
workdir, the same prior draws at each NFE of ``--digits_nfes`` by Euler on the uniform grid.
``--digits_profile=VARIANT:WORKDIR,...`` prints, per fixed t, the test split's L_diff
integrand, E‖a‖² and E‖σ_t a‖² of the ODE's acceleration a, and E‖x̂ − x‖² (one ε draw).
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
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import fidelity_report as fr
from experiments import report_lib as lib
from experiments import digits, toy2d, toy2d_ot
from nfdm_jax import losses, plotting, sampling
from nfdm_jax.train import loop, quality

SHIPPED = {"vp": (toy2d, "vdm"), "flow_matching": (toy2d, "flow_matching"),
           "nfdm": (toy2d, ""), "nfdm_ot": (toy2d_ot, "")}
MODE_STD = 0.5 / math.sqrt(2.0)


def on_mode_fraction(samples: np.ndarray) -> float:
    """Share of samples within 3 standard deviations of one of the ring's eight centres."""
    means = lib.DENSITIES["eight_gaussians"].means
    d = np.linalg.norm(samples[:, None, :] - means[None], axis=-1).min(axis=1)
    return float(np.mean(d < 3 * MODE_STD))


def ode_samples(t: fr.Trained, seed: int, z1: jax.Array, nfe: int, method: str,
                rho: float) -> np.ndarray:
    drift = t.model.ode_drift_fn(t.seed(seed))
    run = jax.jit(lambda z: sampling.ode_sample(drift, z, nfe=nfe, method=method, rho=rho))
    return np.asarray(run(z1))


def measure(name: str, t: fr.Trained, args: argparse.Namespace, truth: np.ndarray,
            z1: jax.Array, x_eval: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"energy": {}, "on_mode": {}}
    for method in args.methods.split(","):
        for rho in (float(r) for r in args.rhos.split(",")):
            for nfe in (int(n) for n in args.nfes.split(",")):
                if method == "heun" and nfe < 2:
                    continue
                e, m = [], []
                for i in range(args.seeds):
                    samples = ode_samples(t, i, z1, nfe, method, rho)
                    finite = np.all(np.isfinite(samples))
                    e.append(lib.energy(samples, truth) if finite else float("nan"))
                    m.append(on_mode_fraction(samples) if finite else 0.0)
                out["energy"][f"{method}/rho={rho:g}/{nfe}"] = fr.seed_stats(e)
                out["on_mode"][f"{method}/rho={rho:g}/{nfe}"] = fr.seed_stats(m)
    nelbo = []
    for i in range(args.seeds):
        per = lib.nelbo_per_example(t.model, t.seed(i), x_eval, jax.random.key(7 + i), 8)
        nelbo.append(float(np.mean(per["diff"] + per["rec"] + per["prior"])))
    out["nelbo"] = fr.seed_stats(nelbo)
    ts = (np.arange(10) + 0.5) / 10
    out["sigma_profile"] = {"t": ts.tolist(), "sigma": fr.sigma_profile(
        t.model, t.seed(0), x_eval[:1024], ts).tolist()}
    out["curvature_profile"] = curvature_profile(t, x_eval[:1024], ts)
    out["final_train_loss"] = fr.seed_stats(list(t.losses[:, -1]))
    out["train_seconds"] = t.seconds
    return out


def curvature_profile(t: fr.Trained, x: np.ndarray, ts: np.ndarray) -> list[float]:
    """E ‖d²z/dt²‖² of the seed-0 model's ODE at z_t ~ q(z_t | x), at each fixed t of ``ts``."""
    params = t.seed(0)
    fwd, pred = t.model.forward_fn(params), t.model.predictor_fn(params)
    x = jnp.asarray(x)

    @jax.jit
    def at(tt: jax.Array) -> jax.Array:
        tb = jnp.full((x.shape[0],), tt)
        mu, log_sigma = fwd(x, tb)
        z = mu + jnp.exp(log_sigma) * jax.random.normal(jax.random.key(11), x.shape)
        return jnp.mean(jnp.sum(jnp.square(losses.ode_acceleration(fwd, pred, z, tb)), -1))

    return [float(at(jnp.asarray(v))) for v in ts]


PROFILE_TS = (0.002, 0.01, 0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)


def digits_profile(variant: str, workdir: str) -> list[dict[str, float]]:
    """Per t of :data:`PROFILE_TS`, means over the digits test split at z_t ~ q(z_t | x):
    ``diff`` (nats per image per unit t), ``accel2`` E‖a‖², ``scaled2`` E‖σ_t a‖² (the
    penalty per unit λ), ``x_err`` E‖x̂ − x‖² and ``sigma``."""

    def profile(exp: Any, params: Any, step: int) -> list[dict[str, float]]:
        x = lib.eval_split(exp.model, exp.data.eval["x"])
        m = exp.model
        fwd, pred, vol = m.forward_fn(params), m.predictor_fn(params), m.volatility_fn(params)
        eps = jax.random.normal(jax.random.key(3), x.shape)
        axes = tuple(range(1, x.ndim))

        @jax.jit
        def at(t: jax.Array) -> dict[str, jax.Array]:
            tb = jnp.full((x.shape[0],), t)
            mu, log_sigma = fwd(x, tb)
            sigma = jnp.exp(log_sigma) * jnp.ones_like(x)
            z = mu + sigma * eps
            a = losses.ode_acceleration(fwd, pred, z, tb)
            return {"diff": jnp.mean(losses.diffusion_loss(fwd, pred, vol, x, tb, eps)),
                    "accel2": jnp.mean(jnp.sum(a ** 2, axes)),
                    "scaled2": jnp.mean(jnp.sum((sigma * a) ** 2, axes)),
                    "x_err": jnp.mean(jnp.sum((pred(z, tb) - x) ** 2, axes)),
                    "sigma": jnp.mean(sigma)}

        return [{"t": t} | {k: float(v) for k, v in at(jnp.asarray(t)).items()}
                for t in PROFILE_TS]

    return loop.from_latest(_digits_config(variant, workdir), workdir, "profile", profile)


def _digits_config(variant: str, workdir: str) -> digits.common.ConfigDict:
    """``digits.py:variant`` with the workdir's stored λ, which a variant does not name and
    which neither a profile nor sampling depends on."""
    config = digits.get_config(variant)
    with open(os.path.join(workdir, "config.json")) as f:
        with config.unlocked():
            config.model.curvature_weight = json.load(f)["model"]["curvature_weight"]
    return config


def digits_figure(entries: str, nfes: list[int], path: str, num: int = 8) -> None:
    """A grid of panels, one row per workdir and one column per NFE, each ``num`` samples
    from the same prior draws (so a column compares models, a row shows what NFE buys)."""
    labels, panels = [], []
    for entry in entries.split(","):
        label, variant, workdir = entry.split(":", 2)
        config = _digits_config(variant, workdir)
        with config.unlocked():
            config.sample.method, config.sample.rho = "euler", 1.0
        key = jax.random.key(5)

        def draw(exp: Any, params: Any, step: int) -> list[np.ndarray]:
            return [plotting.image_grid(quality.samples_at(exp, params, key, n, num), ncols=4)
                    for n in nfes]

        labels.append(label)
        panels.append(loop.from_latest(config, workdir, "sample from", draw))
    fig = Figure(figsize=(1.3 * len(nfes), 0.75 * len(labels) + 0.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), len(nfes), squeeze=False)
    for i, (label, row) in enumerate(zip(labels, panels)):
        for j, (nfe, panel) in enumerate(zip(nfes, row)):
            ax = axes[i, j]
            ax.imshow(panel[..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=150)
    print(f"wrote {path}", flush=True)


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.4f} ± {stats['se']:.4f}"


def render(rows: list[dict[str, Any]], nfes: list[int]) -> str:
    """Markdown tables from runs.jsonl: Euler on the uniform grid, then each NFE's best
    (method, ρ) setting, with the held-out NELBO and the training time."""
    head = "| model | tag | steps | seeds | " + " | ".join(f"NFE {n}" for n in nfes)
    rule = "|---" * (4 + len(nfes)) + "|"
    euler, best = [head + " | NELBO (nats) | train s |", rule + "---|---|"], [head + " |", rule]
    for r in rows:
        lead = f"| {r['model']} | {r['tag']} | {r['steps']} | {r['seeds']} | "
        e = r["energy"]
        euler.append(lead + " | ".join(_cell(e[f"euler/rho=1/{n}"]) for n in nfes)
                     + f" | {_cell(r['nelbo'])} | {r['train_seconds']:.0f} |")
        cells = []
        for n in nfes:
            k = min((k for k in e if k.endswith(f"/{n}")), key=lambda k: e[k]["mean"])
            cells.append(f"{_cell(e[k])} ({k.rsplit('/', 1)[0].replace('/rho=', ' ρ=')})")
        best.append(lead + " | ".join(cells) + " |")
    return ("Energy distance² to the ring, Euler, uniform grid (mean ± s.e. over seeds):\n\n"
            + "\n".join(euler) + "\n\nBest sampler setting per NFE (Euler/Heun, ρ):\n\n"
            + "\n".join(best) + "\n")


def parse_edits(values: list[str]) -> dict[str, dict[str, Any]]:
    """``["nfdm_ot:model.curvature_weight=1.0", ...]`` → ``{model: {field: value}}``."""
    edits: dict[str, dict[str, Any]] = {}
    for v in values:
        name, assignment = v.split(":", 1)
        field, value = assignment.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare string, e.g. forward
        edits.setdefault(name, {})[field] = parsed
    return edits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="reports/few_step")
    parser.add_argument("--models", default="vp,flow_matching,nfdm,nfdm_ot")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfes", default="1,2,4,8,64")
    parser.add_argument("--methods", default="euler,heun")
    parser.add_argument("--rhos", default="1")
    parser.add_argument("--edit", action="append", default=[],
                        help="MODEL:group.field=value, repeatable")
    parser.add_argument("--tag", default="", help="label of this run in runs.jsonl")
    parser.add_argument("--digits", default="", help="LABEL:VARIANT:WORKDIR,... (figure)")
    parser.add_argument("--digits_nfes", default="1,2,4,8,16,64")
    parser.add_argument("--digits_profile", default="", help="VARIANT:WORKDIR,... (per-t)")
    parser.add_argument("--render", action="store_true",
                        help="only write --out/results.md from --out/runs.jsonl")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, "runs.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(render(rows, [int(n) for n in args.nfes.split(",")]))
        return None
    if args.digits:
        os.makedirs(args.out, exist_ok=True)
        return digits_figure(args.digits, [int(n) for n in args.digits_nfes.split(",")],
                             os.path.join(args.out, "digits_samples_vs_nfe.png"))
    if args.digits_profile:
        for entry in args.digits_profile.split(","):
            variant, workdir = entry.split(":", 1)
            print(f"{variant or 'nfdm'} {workdir}")
            for r in digits_profile(variant, workdir):
                print("  " + "  ".join(f"{k}={v:.4g}" for k, v in r.items()), flush=True)
        return None
    edits = parse_edits(args.edit)
    s = dataclasses.replace(fr.Settings(), steps=args.steps, seeds=args.seeds,
                            chunk=min(500, args.steps))
    pool = lib.sample_density("eight_gaussians", np.random.default_rng(100), fr.POOL_SIZE)
    truth = lib.sample_density("eight_gaussians", np.random.default_rng(300), 4096)
    x_eval = lib.sample_density("eight_gaussians", np.random.default_rng(200), 4096)
    z1 = sampling.sample_prior(jax.random.key(2), (4096, 2))
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(0)
    for name in args.models.split(","):
        module, variant = SHIPPED[name]
        config = fr.make_config(module, variant, edits.get(name, {}), s, pool)
        start = time.perf_counter()
        trained = fr.Trained(config, pool, s, jax.random.fold_in(key, fr.model_index(name)))
        row = {"model": name, "tag": args.tag, "steps": args.steps, "seeds": args.seeds,
               "edits": edits.get(name, {}),
               "command": "python -m experiments.few_step_report " + " ".join(argv or []),
               **measure(name, trained, args, truth, z1, x_eval)}
        with open(os.path.join(args.out, "runs.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        e = row["energy"]
        print(f"[{time.perf_counter() - start:.0f} s] {name} {args.tag} nelbo "
              f"{row['nelbo']['mean']:.3f}: " + "  ".join(
                  f"{k}: {v['mean']:.4f}±{v['se']:.4f}" for k, v in e.items()), flush=True)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])

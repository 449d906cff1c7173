"""NFDM-OT on the 2-D 8-Gaussians ring: a deterministic model with straight trajectories.

Launch::

    python -m experiments.run --config=experiments/toy2d_ot.py --workdir=/tmp/nfdm_ot_toy2d

g ≡ 0, loss = velocity matching + λ · curvature (SPEC §1.4) with λ = ``model.curvature_weight``
(0.1 here; the paper's value is unknown). Meant for: one CPU or GPU. Expected: samples on
the eight modes from 1–4 Euler steps, nearly straight generative paths.
"""
from experiments import common
from experiments.toy2d import measure_data_stats, toy_defaults


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    toy_defaults(c)
    measure_data_stats(c)
    c.model.name, c.model.volatility, c.model.curvature_weight = "nfdm_ot", "zero", 0.1
    c.sample.method, c.sample.steps = "ode", 4
    return common.apply_variants(c, arg, {})

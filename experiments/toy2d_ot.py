"""NFDM-OT on the 2-D 8-Gaussians ring: few-step sampling by a learned, straightened ODE.

Launch::

    python -m experiments.run --config=experiments/toy2d_ot.py --workdir=/tmp/nfdm_ot_toy2d

NFDM's NELBO (learned g) plus λ E‖σ_t d²z/dt²‖², the curvature of its probability-flow ODE
at z_t ~ q(z_t | x) in units of the noise (SPEC §1.4, ``losses.nfdm_ot_terms``), with
λ = ``model.curvature_weight`` = 0.1, on the neural process whose untrained form is the
straight path (the ``ot`` variant of ``experiments/common.py``). Samples by Euler with 4 steps
(``sample.steps``) on the ρ = 2 time grid (``sample.rho``), the best grid at NFE 2 and 4.
Meant for: one CPU; 18 000 steps, 3× the NFDM default, because the penalty slows the fit of
the marginals (``reports/few_step``).

Measured by ``python -m experiments.few_step_report`` at the fidelity report's 2-D budget
(MLPs 128 wide, Adam 3e-3 decayed to 0, EMA 0.999): energy distance² to the ring 0.0063 /
0.0057 / 0.0039 / 0.0031 / 0.0043 at Euler NFE 1 / 2 / 4 / 8 / 64 after 18 000 steps (2 seeds;
0.0035 at NFE 2 and 0.0029 at NFE 4 with ``sample.rho=2``), the best of the four models at
NFE 1–4 (flow matching's best at NFE 4: 0.012 with Heun; its limit 0.0022), held-out NELBO
2.87 nats; after 6 000 steps (3 seeds) 0.0075 / 0.0068 / 0.0042 / 0.0031 / 0.0048.
Expected: samples on the eight modes from 1–4 Euler steps.
"""
from experiments import common
from experiments.toy2d import measure_data_stats, toy_defaults


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    toy_defaults(c)
    measure_data_stats(c)
    common.model_variants()["ot"](c)
    c.train.num_steps = 18_000
    c.sample.rho = 2.0
    return common.apply_variants(c, arg, {})

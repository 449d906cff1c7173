"""NFDM-OT on the 2-D 8-Gaussians ring: few-step sampling by a learned, straightened ODE.

Launch::

    python -m experiments.run --config=experiments/toy2d_ot.py --workdir=/tmp/nfdm_ot_toy2d

NFDM's NELBO (learned g) plus λ E‖d²z/dt²‖², the curvature of its probability-flow ODE at
z_t ~ q(z_t | x) (SPEC §1.4, ``losses.nfdm_ot_terms``), with λ = ``model.curvature_weight`` =
0.1, on the neural process whose untrained form is the straight path (the ``ot`` variant of
``experiments/common.py``). Samples by Euler with 4 steps (``sample.steps``).
Meant for: one CPU. Measured (``reports/few_step``, 6 000 steps): see ``reports/README.md``.
"""
from experiments import common
from experiments.toy2d import measure_data_stats, toy_defaults


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    toy_defaults(c)
    measure_data_stats(c)
    common.model_variants()["ot"](c)
    return common.apply_variants(c, arg, {})

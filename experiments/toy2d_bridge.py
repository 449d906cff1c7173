"""NFBM in 2-D: two moons (t = 1, left) → checkerboard (t = 0, right) around a disc obstacle.

Launch::

    python -m experiments.run --config=experiments/toy2d_bridge.py --workdir=/tmp/nfbm_toy2d

The obstacle penalty λ_obs · relu(r − ‖z_t − c‖) on forward samples (SPEC §1.5) with
c = (0, 0), r = 1, λ_obs = 10 pushes the learned forward paths, and hence the generated
ones, around the disc. Meant for: one CPU or GPU. Expected: generated paths that avoid
the disc and end on the checkerboard.
"""
from experiments import common
from experiments.toy2d import measure_data_stats, toy_defaults


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    toy_defaults(c)
    c.model.name, c.model.volatility_base = "nfbm", "delta_matched"
    c.model.obstacle_weight, c.model.obstacle_centre, c.model.obstacle_radius = (
        10.0, (0.0, 0.0), 1.0)
    c.data.target, c.data.target_offset = "checkerboard", (4.5, 0.0)
    c.data.source, c.data.source_offset = "two_moons", (-4.5, 0.0)
    measure_data_stats(c)
    return common.apply_variants(c, arg, {})

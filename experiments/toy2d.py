"""NFDM on the 2-D 8-Gaussians ring (SPEC §1.6, the official toy's settings).

Launch::

    python -m experiments.run --config=experiments/toy2d.py --workdir=/tmp/nfdm_toy2d

MLPs (256 wide, 3 hidden layers), Adam 1e-3, batch 1024, 1e5 steps, t ~ U[0, 1]
(stratified), δ = 0.01, continuous data. Meant for: one CPU or GPU (minutes on a GPU).
Expected: samples on the eight modes; NELBO well below the N(0, I) prior's ≈ 3.8 nats.
Variants: ``tiny``, ``vdm``, ``flow_matching``, ``ot``.
"""
from experiments import common
from nfdm_jax import data


def toy_defaults(c: common.ConfigDict) -> None:
    """Settings shared by the 2-D experiments."""
    c.model.delta = 0.01
    c.net.depth = 3
    c.data.name, c.data.convention, c.data.target = "toy2d", "continuous", "eight_gaussians"
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 1e-3, "constant", 0
    c.optim.ema_decay = 0.999
    c.train.batch_size, c.train.num_steps = 1024, 100_000
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 500, 10_000, 10_000
    c.train.eval_batch_size = 4096
    c.sample.num = 2048


def measure_data_stats(c: common.ConfigDict) -> None:
    """``config.model.data_mean`` / ``data_std`` from the training split (edm predictor)."""
    c.model.data_mean, c.model.data_std = data.channel_stats(c.data, c.seed)


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    toy_defaults(c)
    measure_data_stats(c)
    return common.apply_variants(c, arg, common.model_variants())

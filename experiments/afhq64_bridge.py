"""NFBM: a bridge from AFHQ dogs (t = 1) to AFHQ cats (t = 0) at 64×64 (SPEC §1.5).

Launch::

    python -m experiments.run --config=experiments/afhq64_bridge.py --workdir=/tmp/nfbm_afhq \\
        --config.data.data_dir=/data/afhq

``data_dir`` holds AFHQ's ``train/{cat,dog,wild}`` and ``val/...`` folders (StarGAN v2's
``bash download.sh afhq-dataset``); images are box-downsampled to 64×64 once, in memory.
Both networks see the dog image as 3 extra input channels.

Meant for: 8×A100 / TPU v4-32 (global batch 256, 200k steps; the paper's schedule for
this experiment is not known to us). Expected: FID ≈ 12 on cats from validation dogs
(paper: 12.06). δ = 1e-3 as in cifar10.py.
"""
from experiments import common


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.name, c.model.volatility_base = "nfbm", "delta_matched"
    c.model.delta = 1e-3
    # Rough image statistics for the edm predictor; measure with nfdm_jax.data.channel_stats.
    c.model.data_mean, c.model.data_std = (0.0, 0.0, 0.0), (0.5, 0.5, 0.5)
    c.net.preset = "afhq64"
    c.data.name, c.data.target, c.data.source = "afhq64", "cat", "dog"
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 1e-4, "constant", 5_000
    c.train.batch_size, c.train.num_steps = 256, 200_000
    return common.apply_variants(c, arg, {})

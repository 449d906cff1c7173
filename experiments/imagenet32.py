"""NFDM on downsampled ImageNet 32×32 (SPEC §1.6), discrete 8-bit likelihood.

Launch::

    python -m experiments.run --config=experiments/imagenet32.py --workdir=/tmp/nfdm_in32 \\
        --config.data.data_dir=$TFDS_DATA_DIR

Data: ``tfds build downsampled_imagenet/32x32 --file_format=array_record`` (needs the
manually downloaded archives; see the TFDS catalogue). Variants as in cifar10.py.

Meant for: a TPU v4-64 / 16×A100 class job (global batch 1024, 250k steps).
Expected: test BPD ≈ 3.3–3.4 (paper: 3.34). δ = 1e-3 for the reason given in cifar10.py.
"""
from experiments import common


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.delta = 1e-3
    # ImageNet's usual per-channel statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)
    # in bin-centre units, not measured on the downsampled split (nfdm_jax.data.channel_stats).
    c.model.data_mean = (-0.0295, -0.0873, -0.1928)
    c.model.data_std = (0.4562, 0.4463, 0.4482)
    c.net.preset = "imagenet32"
    c.data.name = "imagenet32"
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 1e-4, "polynomial", 20_000
    c.train.batch_size, c.train.num_steps = 1024, 250_000
    return common.apply_variants(c, arg, common.model_variants())

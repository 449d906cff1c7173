"""NFDM on downsampled ImageNet 64×64 (SPEC §1.6), discrete 8-bit likelihood.

Launch::

    python -m experiments.run --config=experiments/imagenet64.py --workdir=/tmp/nfdm_in64 \\
        --config.data.data_dir=$TFDS_DATA_DIR

Data: ``tfds build downsampled_imagenet/64x64 --file_format=array_record``. Variants as
in cifar10.py. For memory, ``--config.net.dtype=bfloat16`` (float32 parameters and heads)
and ``--config.mesh.state_over_data=True`` (EMA and Adam moments sharded over the data axis:
5.50 → 1.78 GiB per chip on 16 chips). Per-chip memory and time on TPU slices:
``python -m benchmarks.scale --configs=imagenet64`` (benchmarks/README.md).

Meant for: a TPU v4-128 / 32×A100 class job (global batch 2048, 157k steps, constant
learning rate). Expected: test BPD ≈ 3.2 (paper: 3.20). δ = 1e-3 as in cifar10.py.
"""
from experiments import common


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.delta = 1e-3
    # ImageNet's usual per-channel statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)
    # in bin-centre units, not measured on the downsampled split (nfdm_jax.data.channel_stats).
    c.model.data_mean = (-0.0295, -0.0873, -0.1928)
    c.model.data_std = (0.4562, 0.4463, 0.4482)
    c.net.preset = "imagenet64"
    # Block remat: per-chip memory on TPU slices under "Planning a run on a pod slice" in
    # README.md (benchmarks/scale.py).
    c.net.remat = True
    c.data.name = "imagenet64"
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 1e-4, "constant", 0
    c.train.batch_size, c.train.num_steps = 2048, 157_000
    return common.apply_variants(c, arg, common.model_variants())

"""NFDM on scikit-learn's 8×8 digits: real 8-bit images that need no download.

Launch (CPU is enough)::

    python -m experiments.run --config=experiments/digits.py --workdir=/tmp/nfdm_digits

1797 images with 17 grey levels mapped to round(v · 255 / 16); 1500 train, 297 test.
A small U-Net directly on 8×8×1 (the ``tiny`` preset at 16 channels, forward net 8),
discrete likelihood, δ = 1e-3 (see cifar10.py for why not 0.01). Sized for a CPU:
XLA's CPU convolutions are slow (~2 s per step at batch 32 on a shared 2-core VM,
after ~3 min of compilation), so the default run is 600 steps.

Meant for: a CPU. Measured on a shared 2-core VM (K = 1 t-sample per test image):

    model (variant)   steps   wall (incl. ~3 min compiling)   test BPD
    nfdm              120      9.4 min                         40.8
    nfdm              600     12.2 min                         10.8   (14.1 at step 300)
    vdm (``:vdm``)    600      4.7 min                          5.7   (6.2 at step 300)

NFDM starts far worse (train BPD 1.1e5 at step 20): the learned g starts from the δ-matched
VP volatility, ~10³× too large mid-path for the neural process's initial path
σ = δ^(1−t), and must first shrink. Expected: test BPD far below 8 (the uniform 8-bit
baseline) with longer training; VDM gets there within the default 600 steps.
"""
from experiments import common


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.delta = 1e-3
    c.model.parameterization = "wiener"  # see drifts.wiener_preconditioned
    c.net.preset, c.net.channels, c.net.forward_channels = "tiny", 16, 8
    c.data.name = "digits"
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 2e-3, "polynomial", 20
    c.optim.ema_decay = 0.99
    c.train.batch_size, c.train.num_steps = 32, 600
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 50, 300, 100
    c.train.eval_batch_size = 100  # 297 test images: 3 padded batches
    c.train.eval_t_samples = 1
    return common.apply_variants(c, arg, common.model_variants())

"""NFDM on scikit-learn's 8×8 digits: real 8-bit images that need no download.

Launch (CPU is enough)::

    python -m experiments.run --config=experiments/digits.py --workdir=/tmp/nfdm_digits

1797 images with 17 grey levels mapped to round(v · 255 / 16); 1500 train, 297 test.
A small U-Net directly on 8×8×1 (the ``tiny`` preset at 16 channels, forward net 8),
discrete likelihood, δ = 1e-3 (see cifar10.py for why not 0.01). Sized for a CPU:
XLA's CPU convolutions are slow (~2 s per step at batch 32 on a shared 2-core VM,
after ~3 min of compilation), so the default run is 600 steps.

Meant for: a CPU. Measured on a shared 2-core VM (test BPD over all 297 test images,
K = 1 t-sample each; wall time includes ~3 min of compiling and other jobs on the cores):

    model (variant)                        steps   wall       test BPD
    nfdm, paper's preconditioning,         600    12.2 min   10.8
      δ-matched g base (earlier default)
    nfdm, Wiener preconditioning (default)  600    12.2 min    6.84  (8.07 at step 300)
    same, --config.train.num_steps=2000    2000    35 min      5.16  (5.72 at step 1000)
      --config.train.eval_every=1000
    vdm (``:vdm``)                          600     4.7 min    5.7

The paper's predictor x̂ = (1 − t) z + (t + δ) NN starts at x̂ = (1 − t) z, whose error at small t
is weighted by an SNR of ~1/δ² = 10⁶: the initial NELBO is ~10⁴ bits/dim, and most of a short
run is spent undoing that. ``parameterization = "wiener"`` (drifts.wiener_preconditioned)
starts at the linear posterior mean of the untrained process instead (~10 bits/dim at step 0).
Expected: test BPD below the uniform model's 8.0 within the default 600 steps, and still
falling; ``--config.train.num_steps=2000`` trains further.
"""
from experiments import common
from nfdm_jax import data


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.delta = 1e-3
    c.net.preset, c.net.channels, c.net.forward_channels = "tiny", 16, 8
    c.data.name = "digits"
    # The training split's per-channel mean and std, for the edm predictor.
    c.model.data_mean, c.model.data_std = data.channel_stats(c.data, c.seed)
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 2e-3, "polynomial", 20
    c.optim.ema_decay = 0.99
    c.train.batch_size, c.train.num_steps = 32, 600
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 50, 300, 100
    c.train.eval_batch_size = 100  # 297 test images: 3 padded batches
    c.train.eval_t_samples = 1
    return common.apply_variants(c, arg, common.model_variants())

"""NFDM on scikit-learn's 8×8 digits: real 8-bit images that need no download.

Launch (CPU is enough)::

    python -m experiments.run --config=experiments/digits.py --workdir=/tmp/nfdm_digits

1797 images with 17 grey levels mapped to round(v · 255 / 16); 1500 train, 297 test.
A small U-Net directly on 8×8×1 (the ``digits`` preset: one level, 32 channels, forward
net 16), discrete likelihood, δ = 1e-3 (see cifar10.py for why not 0.01). Sized for 2 CPU
cores: 2000 steps at batch 32, 10 per dispatch, the test bound at steps 1000 and 2000.
Measured on an idle 2-core machine: 3 min 49 s wall in all (28 s compiling the train step,
10.2 steps/s), test BPD 4.98 ± 0.18 at step 1000 and 4.63 ± 0.16 at step 2000 (K = 1
t-sample per test image; ± the standard error over images); with
``--config.train.num_steps=600 --config.train.eval_every=300``: 1 min 54 s, 5.95 at step 300,
5.40 ± 0.19 at step 600. On CPU the U-Net's convolutions run as matmuls
(``net.conv = "auto"``): XLA's CPU convolutions spent 90 % of the step in 341 small
convolutions (0.44 → 3.5 steps/s on a loaded VM).
Compute stays float32 (``net.dtype``): ``--config.net.dtype=bfloat16`` reached the same
test BPD (5.79 vs 5.74 at step 600, 6.35 vs 6.45 at step 300: within run-to-run noise) but
took 23 % more CPU time (217 vs 176 s), as CPUs lack fast bf16 matmuls. Since bf16 did not
cost likelihood here, the image configs may use it on GPUs/TPUs
(``benchmarks/gpu_cifar10.sh`` measures its speed); their default stays float32.

Meant for: a CPU. Predictor: ``edm`` (drifts.edm_preconditioned), the default of every neural
model since issue #9, with the training split's mean and std (−0.39, 0.75 in bin-centre units)
measured when the config is built; it starts at the linear posterior mean of the untrained
process. The paper's predictor (``--config.model.parameterization=preconditioned``) starts at
x̂ = (1 − t) z, whose error at small t is weighted by an SNR of ~1/δ² = 10⁶ (initial NELBO ~10⁴
bits/dim). Test BPD of this config at several step counts, and of ``:frozen`` and ``:vdm``:
``reports/fidelity/results.md`` (``python -m experiments.fidelity_report --sections=digits``).
Earlier measurements (before issue #9; K = 1): the previous Wiener predictor 6.84 at 600 steps
and 5.16 at 2000; ``:vdm`` 5.7 at 600 (with a δ-width decoder, not its schedule's).
Those digits numbers were measured on the earlier ``tiny``-preset U-Net (16 channels).
Expected: test BPD ≈ 4.6 at step 2000 (the uniform 8-bit model: 8.0), still falling; not yet
the 4.09 of a uniform model over the 17 grey levels.
"""
from experiments import common
from nfdm_jax import data


def get_config(arg: str = "") -> common.ConfigDict:
    c = common.base_config()
    c.model.delta = 1e-3
    c.net.preset = "digits"  # 32 channels, forward net 16: see nets.presets
    c.data.name = "digits"
    # The training split's per-channel mean and std, for the edm predictor.
    c.model.data_mean, c.model.data_std = data.channel_stats(c.data, c.seed)
    # 17 grey levels 2/16 apart in [−1, 1]: features at that period and its harmonics.
    c.model.fourier_exponents = (4, 5, 6, 7)
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 2e-3, "polynomial", 20
    c.optim.ema_decay = 0.99
    c.train.batch_size, c.train.num_steps, c.train.steps_per_dispatch = 32, 2000, 10
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 50, 1000, 100
    c.train.eval_batch_size = 100  # 297 test images: 3 padded batches
    c.train.eval_t_samples = 1
    return common.apply_variants(c, arg, common.model_variants())

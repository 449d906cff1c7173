"""NFDM on scikit-learn's 8×8 digits: real 8-bit images that need no download.

Launch (CPU is enough)::

    python -m experiments.run --config=experiments/digits.py --workdir=/tmp/nfdm_digits

1797 images with 17 grey levels mapped to round(v · 255 / 16); 1500 train, 297 test.
A small U-Net directly on 8×8×1 (the ``digits`` preset: one level, 32 channels, forward
net 16), discrete likelihood, δ = 1e-3 (see cifar10.py for why not 0.01). Sized for 2 CPU
cores: 2000 steps at batch 32, 10 per dispatch, the test bound at steps 1000 and 2000.

The 17 levels sit 2/16 apart in [−1, 1], 16 of the 8-bit bins, so a model that does not
know where they are pays up to log₂ 16 = 4 bits per pixel for it: without input features
this config reached only 4.63 bits/dim at step 2000 (above the 4.09 of a uniform model over
the 17 levels). ``model.fourier_exponents = (4, 5, 6, 7)`` gives the predictor sin/cos of
2ⁿ π x̂₀ (x̂₀: the linear posterior mean, z in data units at small noise; VDM's Fourier
features), at whose period 2/16 (n = 4) every level has the same phase: test BPD 1.97 at
step 2000 (K = 1; 2.11 at step 1000). The per-t profile (reports/fidelity) shows the small-t
loss, where the levels are resolved, down to ~3 nats per image per unit t.

Measured on an idle 2-core machine: 4 min 30 s wall in all with a cold compilation cache
(8.6 steps/s over the run, compiling and evaluating included);
test BPD 2.12 ± 0.15 at step 1000 and 1.988 ± 0.146 at step 2000 (K = 1 t-sample per test
image; ± the standard error over images; seed 1: 1.974). On CPU the
U-Net's convolutions run as matmuls (``net.conv = "auto"``): XLA's CPU convolutions spent
90 % of the step in 341 small convolutions (0.44 → 3.5 steps/s on a loaded VM).
Compute stays float32 (``net.dtype``): ``--config.net.dtype=bfloat16`` reached the same
test BPD at step 2000, 1.974 and 1.995 for seeds 0 and 1 against float32's 1.988 and 1.974
(paired +0.004 ± 0.018), but ran at 3.9 steps/s against 5.3 (two runs sharing the 2 cores),
as CPUs lack fast bf16 matmuls. Since bf16 does not cost likelihood here, the image configs
may use it on GPUs/TPUs (``benchmarks/gpu_cifar10.sh`` measures its speed; on a TPU it keeps
4 % fewer temporaries, experiments/cifar10.py); their default stays float32.

Meant for: a CPU. Predictor: ``edm`` (drifts.edm_preconditioned), the default of every neural
model since issue #9, with the training split's mean and std (−0.39, 0.75 in bin-centre units)
measured when the config is built; it starts at the linear posterior mean of the untrained
process. The paper's predictor (``--config.model.parameterization=preconditioned``, which
takes no input features: add ``--config.model.fourier_exponents='()'``) starts at
x̂ = (1 − t) z, whose error at small t is weighted by an SNR of ~1/δ² = 10⁶.

Model: NFDM whose forward network sets μ, with σ(t) held at the untrained process's
(``model.forward_sigma``; the paper's learned σ is ``:learned_sigma``). Against the baselines
on the same U-Net and features (``reports/fidelity/results.md``, ``python -m
experiments.fidelity_report --sections=digits``; K = 16 t-samples per test image, 2 seeds):

===== ============= ================== ============== =============
steps NFDM          ``:learned_sigma`` ``:frozen``    ``:vdm``
===== ============= ================== ============== =============
2000  1.986 ± 0.000 1.974 ± 0.005      1.998 ± 0.017  2.000 ± 0.023
6000  1.813 ± 0.001 1.834 ± 0.001                     1.822 ± 0.011
12000 1.766 ± 0.013 1.789 ± 0.003      1.765 ± 0.010  1.773 ± 0.017
24000 1.747 ± 0.004 1.811 (seed 0)     1.752 (seed 0) 1.764 ± 0.020
===== ============= ================== ============== =============

Paired by seed NFDM − ``:vdm`` is −0.014 ± 0.023, −0.008 ± 0.010, −0.007 ± 0.004 and
−0.017 ± 0.017. Trained on the NELBO a learned σ inflates 5–10× over the untrained process
and falls behind with training (0.045 behind ``:vdm`` at 24 000 steps, reports/fidelity/README.md).
The ``:learned_sigma`` column was measured as ``:learned_sigma,fixed_scalings`` before
that variant's knob was removed; it is what ``:learned_sigma`` trains now (reports/README.md,
"What was tried and removed").
``:flow_matching`` (dequantized convention, not comparable) 5.2 ± 0.5 at 2000 steps.
``:ot`` (NFDM-OT, issue #21, λ = 0.01) at 2000 steps, seeds 0 and 1: test BPD 2.84 ± 0.27,
Euler Fréchet 118 / 70 at NFE 2 / 4 (flow matching 100 / 56, VDM 67 on ρ = 0.5 / 45; floor
11–13). On the digits the penalty does not pay at any λ tried: the best few-step model is the
same straight base without it (``:ot --config.model.curvature_weight=0``): 79 / 42 at 2000
steps, 63 / 32 / 20 at NFE 2 / 4 / 8 at 6000 (test BPD 2.06; reports/few_step).
Expected: test BPD ≈ 2.0 at step 2000.
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
    return common.apply_variants(c, arg, common.model_variants() | {"ot": _ot})


def _ot(c: common.ConfigDict) -> None:
    """NFDM-OT with λ = 0.01: at 2000 steps a larger λ costs Fréchet at every NFE (0.1: 144
    against 106 at NFE 2; 1: 364; reports/few_step)."""
    common.model_variants()["ot"](c)
    c.model.curvature_weight = 0.01

"""The config schema shared by every experiment, with defaults, and variant handling.

Every field any experiment may set exists here, so configs are locked: a misspelt
``--config.a.b=value`` override is an error rather than a silently ignored field.
Fields without a default (the data statistics, a model's own σ choice) are typed placeholders
(``None``).
"""
from __future__ import annotations

from typing import Callable

import ml_collections
from ml_collections import config_dict

ConfigDict = ml_collections.ConfigDict
Variant = Callable[[ConfigDict], None]


def base_config() -> ConfigDict:
    """Defaults: an NFDM on images with SPEC §1.6's optimiser settings."""
    c = ConfigDict()
    c.seed = 0

    c.model = m = ConfigDict()
    m.name = "nfdm"                # a key of nfdm_jax.models.MODELS
    m.delta = 1e-3                 # σ at t = 0; see the image configs for why not 0.01
    m.volatility = "learned"       # learned | vp_matching | *_matched (as volatility_base)
    # Start of a learned g²: neural_matched (nfdm's process) | straight_matched (nfdm_ot's) |
    # delta_matched (bridges).
    m.volatility_base = "neural_matched"
    # Predictor: edm (EDM scalings from the untrained process and the data's statistics) |
    # preconditioned (the paper's) | eps (VP models). See nfdm_jax.models.
    m.parameterization = "edm"
    # Per-channel mean and std of the data in the model's convention, for 'edm'; the
    # experiment configs measure them from the training split (nfdm_jax.data.channel_stats).
    m.data_mean = config_dict.placeholder(tuple)
    m.data_std = config_dict.placeholder(tuple)
    # What the forward network sets: base (μ only; σ stays the untrained process's) |
    # learned (μ and σ, the paper's) | None: the model's default (nfdm: base, since a
    # learned σ inflates 5–10× on the NELBO, issue #9; nfdm_ot and nfbm: learned).
    m.forward_sigma = config_dict.placeholder(str)
    # Fourier features of the predictor's input (edm/eps, images): sin/cos(2ⁿ π ·) for n in
    # this tuple; 4 resolves 17 grey levels, 7 and 8 resolve 8-bit ones (drifts.fourier_features).
    m.fourier_exponents = ()
    m.gamma_min = -13.3            # VP models' linear log-SNR schedule (vdm_learned learns its own)
    m.gamma_max = 5.0
    m.curvature_weight = 0.0       # NFDM-OT λ: the NELBO + λ E‖σ_t d²z/dt²‖² of the ODE
    m.obstacle_weight = 0.0        # NFBM obstacle λ_obs
    m.obstacle_centre = (0.0, 0.0)
    m.obstacle_radius = 1.0

    c.net = n = ConfigDict()
    n.preset = "cifar10"           # nfdm_jax.nets.PRESETS (images): widths, depth, dropout
    n.dtype = "float32"            # compute dtype: float32 | bfloat16 (parameters stay float32)
    n.remat = False
    # Forward net only (it runs under jax.jvp): none | attention (recompute the attention
    # logits and softmax: −16 % of the CIFAR-10 step's TPU temporaries for +0.3 % FLOPs,
    # see experiments/cifar10.py).
    n.forward_remat = "attention"
    n.conv = "auto"                # auto (matmul on CPU, XLA conv elsewhere) | xla | matmul
    n.hidden = 256                 # 2-D MLPs: width
    n.depth = 3                    # 2-D MLPs: hidden layers
    n.forward_time_scale = 1.0     # forward network's time features: sin/cos(scale · t · freqs)

    c.data = d = ConfigDict()
    d.name = "cifar10"             # cifar10 | imagenet32 | imagenet64 | digits | afhq64 | toy2d
    d.data_dir = ""                # TFDS data_dir / AFHQ root; "" = the default
    d.convention = "discrete"      # discrete | dequantized | continuous
    d.target = ""                  # toy2d density / AFHQ class at t = 0
    d.source = ""                  # bridges: toy2d density / AFHQ class at t = 1
    d.target_offset = (0.0, 0.0)
    d.source_offset = (0.0, 0.0)
    d.size = 2 ** 20               # toy2d: training pool size
    d.eval_size = 2 ** 14

    c.optim = o = ConfigDict()
    o.lr = 5e-4
    o.schedule = "polynomial"      # polynomial (linear decay to 0 at num_steps) | constant
    o.warmup_steps = 45_000
    o.b1 = 0.9
    o.b2 = 0.999
    o.clip_norm = 1.0              # max global gradient norm (nfdm_jax.train.optimizer)
    o.ema_decay = 0.9999

    c.train = t = ConfigDict()
    t.batch_size = 256             # global, over all processes
    t.num_steps = 391_000
    t.steps_per_dispatch = 1       # steps fused into one dispatch by lax.scan
    t.log_every = 100
    t.eval_every = 10_000
    t.eval_t_samples = 1           # K t-samples per test image (128 for reported numbers)
    t.eval_batch_size = 0          # 0 = batch_size
    t.checkpoint_every = 5_000
    t.max_to_keep = 3

    c.sample = ConfigDict()
    c.sample.every = 0             # training steps between sample grids; 0 = never
    c.sample.num = 64
    c.sample.method = "sde"        # sde (Euler–Maruyama) | euler | heun (probability-flow ODE)
    c.sample.rho = 1.0             # time grid t_i = (1 − i/N)^ρ: 1 uniform, > 1 denser near data
    c.sample.steps = 256           # SDE steps, or ODE function evaluations
    # --mode=eval sample quality: Fréchet distance (digits: classifier features; images: FID,
    # given the Inception weights file) of eval_num samples at each NFE in eval_nfe.
    c.sample.eval_nfe = (16, 64, 256)
    c.sample.eval_num = 1000
    c.sample.inception_weights = ""  # .npz of the FID Inception (nfdm_jax/metrics/inception.py)

    c.mesh = ConfigDict()
    c.mesh.model = 1               # size of the 'model' (parameter-sharding) axis
    c.mesh.shard_min_size = 2 ** 18  # parameters with fewer elements are replicated
    c.mesh.state_over_data = False   # ZeRO-1: EMA and Adam moments also sharded over 'data'
    return c


def tiny(c: ConfigDict) -> None:
    """Test scale: the tiny U-Net, tiny batches, a few steps, frequent everything."""
    c.net.preset = "tiny"
    c.net.hidden = 32
    c.data.size = 4096
    c.data.eval_size = 64
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.steps_per_dispatch = 1
    c.train.log_every = 2
    c.train.eval_every = 6
    c.train.checkpoint_every = 3
    c.sample.num, c.sample.steps = 4, 4
    c.sample.eval_nfe, c.sample.eval_num = (4,), 64
    c.train.eval_batch_size = 0
    c.train.eval_t_samples = 1
    c.optim.warmup_steps = 2
    c.optim.lr = 1e-3


COMMON_VARIANTS: dict[str, Variant] = {"tiny": tiny}


def apply_variants(c: ConfigDict, arg: str, variants: dict[str, Variant]) -> ConfigDict:
    """Applies comma-separated variants (``"tiny,vdm"``) in order and locks the config."""
    table = {**COMMON_VARIANTS, **variants}
    for name in filter(None, (a.strip() for a in (arg or "").split(","))):
        if name not in table:
            raise ValueError(f"unknown config variant {name!r}; choose from {sorted(table)}")
        table[name](c)
    c.lock()
    return c


def model_variants() -> dict[str, Variant]:
    """Baselines on the same network and data: VDM, learned-γ VDM, flow matching, NFDM-OT,
    the frozen-process control, and the paper's learned-σ NFDM."""

    def vdm(c: ConfigDict) -> None:
        c.model.name, c.model.volatility, c.model.parameterization = "vdm", "vp_matching", "eps"

    def vdm_learned(c: ConfigDict) -> None:
        vdm(c)
        c.model.name = "vdm_learned"

    def flow_matching(c: ConfigDict) -> None:
        c.model.name, c.model.volatility = "flow_matching", "learned"
        c.data.convention = "dequantized" if c.data.convention == "discrete" else c.data.convention

    def frozen(c: ConfigDict) -> None:
        # The control: the same NFDM with its forward process held at the untrained one
        # and g at that process's matched volatility; isolates what learning q adds.
        c.model.name, c.model.volatility = "nfdm_frozen", "neural_matched"

    def learned_sigma(c: ConfigDict) -> None:
        # The paper's NFDM: the forward network sets σ(t) as well as μ. Trained on the
        # NELBO it inflates σ 5–10× and ends behind :vdm at 24 000 digits steps (issue #9).
        c.model.forward_sigma = "learned"

    def ot(c: ConfigDict) -> None:
        # NFDM-OT: the NELBO + λ × the curvature of its ODE, on the straight base path, its
        # g starting at the one that path forgets x under; sampled by Euler at few NFE.
        c.model.name, c.model.volatility = "nfdm_ot", "learned"
        c.model.volatility_base, c.model.curvature_weight = "straight_matched", 0.1
        c.sample.method, c.sample.steps = "euler", 4

    return {"vdm": vdm, "vdm_learned": vdm_learned, "flow_matching": flow_matching,
            "frozen": frozen, "learned_sigma": learned_sigma, "ot": ot}

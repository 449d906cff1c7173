"""Models from configs: Flax networks bound to the pure processes and losses of nfdm_jax.

A :class:`Model` owns the Flax modules of one experiment and exposes pure functions of a
parameter dict ``{"forward", "predictor", "volatility", "gamma"}`` (absent parts are ``{}``):

* :meth:`Model.init` — parameters from a key and an example batch;
* :meth:`Model.loss` — the training objective and its per-batch metrics;
* :meth:`Model.per_example` — per-example objective terms, for evaluation;
* accessors (:meth:`forward_fn`, :meth:`predictor_fn`, :meth:`volatility_fn`,
  :meth:`drift_fn`) returning the plain callables that samplers and likelihoods take.

Models (``config.model.name``), with the forward process and objective they use:

============== =============================== =================================
name           forward process                 objective
============== =============================== =================================
nfdm           neural (SPEC §1.1)              NELBO
nfdm_ot        neural, g ≡ 0                   NFDM-OT (matching + curvature)
nfbm           neural bridge (SPEC §1.5)       L_diff + L_rec (+ obstacle)
vdm            VP, linear or cosine γ          NELBO (VDM's continuous loss)
vdm_learned    VP, learned monotone γ          NELBO
flow_matching  straight path                   NELBO
============== =============================== =================================

Batches are dicts: ``"x"`` the data (uint8 pixels for the ``discrete`` and ``dequantized``
conventions, float for ``continuous``) and, for bridges, ``"x1"`` the source sample.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nfdm_jax import decoders, drifts, forward, losses, nets, schedules, volatility
from nfdm_jax.ops import bcast_time

Array = jax.Array
Params = dict[str, Any]
Batch = dict[str, Array]

MODELS = ("nfdm", "nfdm_ot", "nfbm", "vdm", "vdm_learned", "flow_matching")
VOLATILITIES = ("learned", "vp_matching", "neural_matched", "delta_matched", "sigmoid", "zero")
VOLATILITY_BASES = {"neural_matched": volatility.neural_matched,
                    "delta_matched": volatility.delta_matched}
PARAMETERIZATIONS = ("preconditioned", "wiener", "x", "eps")
_NEURAL = ("nfdm", "nfdm_ot", "nfbm")
_VP = ("vdm", "vdm_learned")
_NETWORK_IDS = {"forward": 0, "predictor": 1}


class Model:
    """The networks, processes and objective of one ``config`` (see the module docstring).

    Args:
      config: the full experiment config; reads ``config.model``, ``config.net`` and
        ``config.data.convention``.
      shape: the shape of one example of ``"x"``, e.g. ``(32, 32, 3)`` or ``(2,)``.
    """

    def __init__(self, config: ml_collections.ConfigDict, shape: tuple[int, ...]):
        validate(config)
        self.config = config
        self.m = config.model
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.name = self.m.name
        self.bridge = self.name == "nfbm"
        self.convention = config.data.convention
        self.decoder_nll = decoders.make_decoder(self.convention, self.m.delta)
        self.log_jacobian = decoders.log_jacobian_per_dim(self.convention)
        self.predictor_net, self.forward_net = _make_networks(config, self.shape, self.bridge)
        self.volatility_net = (nets.VolatilityMLP(self.m.volatility_hidden)
                               if self.m.volatility == "learned" else None)

    # ---------------------------------------------------------------- parameters

    def init(self, key: Array, batch: Batch) -> Params:
        """Parameters ``{"forward", "predictor", "volatility", "gamma"}`` for ``batch``'s shapes."""
        kf, kp, kv, kg = jax.random.split(key, 4)
        x = self.preprocess(batch["x"], kf)
        t = jnp.full((x.shape[0],), 0.5, x.dtype)
        cond = self.condition(batch)
        params: Params = {"forward": {}, "predictor": {}, "volatility": {}, "gamma": {}}
        params["predictor"] = self.predictor_net.init(kp, x, t, cond)["params"]
        if self.name in _NEURAL:
            params["forward"] = self.forward_net.init(kf, x, t, cond)["params"]
        if self.volatility_net is not None:
            params["volatility"] = self.volatility_net.init(kv, t)["params"]
        if self.name == "vdm_learned":
            params["gamma"] = schedules.init_monotone_gamma(kg, self.m.gamma_min, self.m.gamma_max)
        return params

    # ---------------------------------------------------------------- data

    def preprocess(self, x: Array, key: Array) -> Array:
        """Data in the likelihood convention: bin centres, dequantized, or as given (float32)."""
        if self.convention == "discrete":
            return decoders.centred(x)
        if self.convention == "dequantized":
            return decoders.dequantized(key, x)
        return x.astype(jnp.float32)

    def condition(self, batch: Batch) -> Optional[Array]:
        """The bridge source ``batch["x1"]`` as network input (None for other models)."""
        # The bridge source is an input, not modelled data: bin centres, never dequantized.
        if not self.bridge:
            return None
        x1 = batch["x1"]
        return x1.astype(jnp.float32) if self.convention == "continuous" else decoders.centred(x1)

    # ---------------------------------------------------------------- callables

    def _rngs(self, train: bool, dropout_key: Optional[Array], name: str) -> dict[str, Array]:
        # Each network gets its own dropout stream; none is needed in evaluation.
        if not train or dropout_key is None:
            return {}
        return {"dropout": jax.random.fold_in(dropout_key, _NETWORK_IDS[name])}

    def gamma_fn(self, params: Params) -> schedules.Schedule:
        """The log-SNR schedule γ(t) of the VP models."""
        if self.name == "vdm_learned":
            return schedules.monotone_gamma(params["gamma"])
        make = schedules.cosine_gamma if self.m.gamma == "cosine" else schedules.linear_gamma
        return make(self.m.gamma_min, self.m.gamma_max)

    def forward_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                   dropout_key: Optional[Array] = None) -> forward.ForwardFn:
        """``forward(x, t) -> (mu, log_sigma)``; for bridges closed over the source ``x1``."""
        if self.name in _VP:
            return forward.vp_forward(self.gamma_fn(params))
        if self.name == "flow_matching":
            return forward.straight_forward(self.m.delta)
        rngs = self._rngs(train, dropout_key, "forward")

        def net(x: Array, t: Array, cond: Optional[Array] = None) -> tuple[Array, Array]:
            return self.forward_net.apply({"params": params["forward"]}, x, t, cond,
                                          train=train, rngs=rngs)

        if self.bridge:
            bridge = forward.bridge_forward(lambda x0, c, t: net(x0, t, c), self.m.delta)
            return forward.with_pinned_ends(lambda x, t: bridge(x, x1, t),
                                            forward.pinned_ends(bridge))
        return forward.neural_forward(net, self.m.delta)

    def predictor_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                     dropout_key: Optional[Array] = None) -> drifts.Predictor:
        """``predictor(z, t) -> x_hat`` ``[B, *D]``; for bridges closed over the source ``x1``."""
        rngs = self._rngs(train, dropout_key, "predictor")

        def net(z: Array, t: Array) -> Array:
            return self.predictor_net.apply({"params": params["predictor"]}, z, t, x1,
                                            train=train, rngs=rngs)

        if self.m.parameterization == "preconditioned":
            return drifts.preconditioned(net, self.m.delta)
        if self.m.parameterization == "wiener":
            return drifts.wiener_preconditioned(net, self.m.delta, self.m.data_std)
        if self.m.parameterization == "eps":
            gamma = self.gamma_fn(params)

            def from_eps(z: Array, t: Array) -> Array:
                # x̂ = (z − σ_t ε̂) / α_t: VDM's ε-parameterization for VP processes.
                g = bcast_time(gamma(t), z)
                log_alpha = 0.5 * jax.nn.log_sigmoid(-g)
                return (z - jnp.exp(0.5 * jax.nn.log_sigmoid(g)) * net(z, t)) * jnp.exp(-log_alpha)

            return from_eps
        return net

    def volatility_fn(self, params: Params) -> volatility.Volatility:
        """``volatility(t) -> g²`` ``[B]``."""
        kind = self.m.volatility
        if kind == "zero":
            return volatility.zero()
        if kind == "sigmoid":
            return volatility.sigmoid_g2()
        if kind == "vp_matching":
            return volatility.vp_matching(self.gamma_fn(params))
        if kind in VOLATILITY_BASES:
            return VOLATILITY_BASES[kind](self.m.delta)
        base = VOLATILITY_BASES[self.m.volatility_base](self.m.delta)
        net = lambda t: self.volatility_net.apply({"params": params["volatility"]}, t)  # noqa: E731
        return volatility.learned(net, base=base)

    def drift_fn(self, params: Params, x1: Optional[Array] = None) -> drifts.Drift:
        """The reverse SDE's drift f̂(z, t) = f^B(z, t, x̂(z, t)), for Euler–Maruyama."""
        return drifts.generative_drift(self.forward_fn(params, x1), self.predictor_fn(params, x1),
                                       self.volatility_fn(params))

    def ode_drift_fn(self, params: Params, x1: Optional[Array] = None) -> drifts.Drift:
        """The deterministic sampler's drift f(z, t, x̂(z, t)) (g ≡ 0, SPEC §1.2): the
        probability-flow ODE of VP models, NFDM's ODE and NFDM-OT's own dynamics."""
        return drifts.generative_drift(self.forward_fn(params, x1), self.predictor_fn(params, x1),
                                       volatility.zero())

    # ---------------------------------------------------------------- objective

    def per_example(self, params: Params, batch: Batch, key: Array, train: bool = False,
                    dropout_key: Optional[Array] = None) -> dict[str, Array]:
        """Per-example objective terms, each ``[B]``: the loss terms, ``"total"`` and ``"bpd"``.

        ``"total"`` is in nats for likelihood models (``"bpd"`` is then a bound on the
        data's bits per dimension, Jacobian of the convention included) and in squared
        velocity units for NFDM-OT (``"bpd"`` is then just ``total / (D ln 2)``).
        """
        kdata, kt = jax.random.split(key)
        x = self.preprocess(batch["x"], kdata)
        x1 = self.condition(batch)
        fwd = self.forward_fn(params, x1, train=train, dropout_key=dropout_key)
        pred = self.predictor_fn(params, x1, train=train, dropout_key=dropout_key)
        vol = self.volatility_fn(params)
        t, eps = losses.sample_t_eps(kt, x, self.m.t_min)
        if self.name == "nfdm_ot":
            terms = losses.nfdm_ot_loss(fwd, pred, x, t, eps, self.m.curvature_weight)
        elif self.bridge:
            obstacle = None
            if self.m.obstacle_weight > 0:
                obstacle = losses.disc_obstacle(jnp.asarray(self.m.obstacle_centre, jnp.float32),
                                                self.m.obstacle_radius)
            # The bridge closes over x1 itself, so pass the plain forward/predictor through.
            terms = losses.nfbm_loss(forward.with_pinned_ends(lambda x0, _, tt: fwd(x0, tt),
                                                              forward.pinned_ends(fwd)),
                                     lambda z, tt, _: pred(z, tt),
                                     vol, x, x1, t, eps, decoder_nll=self.decoder_nll,
                                     obstacle=obstacle, obstacle_weight=self.m.obstacle_weight)
        else:
            terms = losses.nelbo_terms(fwd, pred, vol, x, t, eps, decoder_nll=self.decoder_nll)
        out = terms._asdict()
        out["total"] = terms.total
        out["bpd"] = losses.bits_per_dim(terms.total, self.dim, self.log_jacobian)
        return out

    def loss(self, params: Params, batch: Batch, key: Array, train: bool = False,
             dropout_key: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
        """The training objective (a scalar) and per-batch means of every term.

        The objective is the batch mean of ``total / D`` (BPD up to ln 2 for likelihood
        models): per-dimension units keep the gradient scale, and hence the meaning of
        global-norm clipping at 1.0, independent of the resolution.
        """
        terms = self.per_example(params, batch, key, train, dropout_key)
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics["loss"] = metrics["total"] / self.dim
        return metrics["loss"], metrics


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the field when the model config is inconsistent."""
    m = config.model
    if m.name not in MODELS:
        raise ValueError(f"config.model.name={m.name!r}; choose from {MODELS}")
    if m.volatility not in VOLATILITIES:
        raise ValueError(f"config.model.volatility={m.volatility!r}; choose from {VOLATILITIES}")
    if m.parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"config.model.parameterization={m.parameterization!r}; "
                         f"choose from {PARAMETERIZATIONS}")
    if config.data.convention not in decoders.CONVENTIONS:
        raise ValueError(f"config.data.convention={config.data.convention!r}; "
                         f"choose from {decoders.CONVENTIONS}")
    if (m.name == "nfdm_ot") != (m.volatility == "zero"):
        raise ValueError("nfdm_ot needs config.model.volatility='zero', and only nfdm_ot may "
                         f"use it (the NELBO divides by g²); got {m.name} with {m.volatility}")
    if m.volatility_base not in VOLATILITY_BASES:
        raise ValueError(f"config.model.volatility_base={m.volatility_base!r}; "
                         f"choose from {tuple(VOLATILITY_BASES)}")
    if m.name == "nfbm" and "neural_matched" in (m.volatility, m.volatility_base):
        raise ValueError("neural_matched volatility is derived for the unpinned neural process; "
                         "bridges (nfbm) need config.model.volatility_base='delta_matched'")
    if m.volatility == "vp_matching" and m.name not in _VP:
        raise ValueError("config.model.volatility='vp_matching' needs a VP model (vdm, vdm_learned)")
    if m.parameterization == "eps" and m.name not in _VP:
        raise ValueError("config.model.parameterization='eps' needs a VP model (vdm, vdm_learned)")
    if m.gamma not in ("linear", "cosine"):
        raise ValueError(f"config.model.gamma={m.gamma!r}; choose 'linear' or 'cosine'")
    if not 0.0 < m.delta < 1.0:
        raise ValueError(f"config.model.delta={m.delta} must lie in (0, 1)")


def _make_networks(config: ml_collections.ConfigDict, shape: tuple[int, ...],
                   bridge: bool) -> tuple[nn.Module, nn.Module]:
    """(predictor, forward) Flax modules: MLPs for vectors, U-Nets for images."""
    n = config.net
    if len(shape) == 1:
        return nets.make_2d_networks(n.hidden, n.depth, n.time_embed_dim)
    overrides = {k: n[k] for k in ("channels", "depth", "dropout", "forward_channels")
                 if n[k] is not None}
    preset = dataclasses.replace(nets.get_preset(n.preset), image_shape=tuple(shape),
                                 cond_channels=shape[-1] if bridge else 0, **overrides)
    return nets.make_networks(preset, jnp.dtype(n.dtype), n.remat, n.conv,
                              n.forward_remat_elementwise)

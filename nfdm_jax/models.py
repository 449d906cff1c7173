"""Models from configs: Flax networks bound to the pure processes and losses of nfdm_jax.

A :class:`Model` owns the Flax modules of one experiment and exposes pure functions of a
parameter dict ``{"forward", "predictor", "volatility", "gamma"}`` (absent parts are ``{}``):

* :meth:`Model.init` — parameters from a key and an example batch;
* :meth:`Model.loss` — the training objective and its per-batch metrics;
* :meth:`Model.per_example` — per-example objective terms, for evaluation;
* accessors (:meth:`forward_fn`, :meth:`predictor_fn`, :meth:`volatility_fn`,
  :meth:`drift_fn`) returning the plain callables that samplers and likelihoods take.

Models (``config.model.name``) are the entries of :data:`MODELS`, one :class:`ModelSpec`
each: its forward process, objective, decoder width, and the volatilities and predictor
parameterizations it allows (:func:`nfdm_jax.train.validation.check_model` derives its rules
from the table). Adding a
model is one entry plus its test.

============== =============================== =================================
name           forward process                 objective
============== =============================== =================================
nfdm           neural (SPEC §1.1)              NELBO
nfdm_frozen    neural, network held at 0       NELBO (control: nothing learned in q)
nfdm_ot        neural, g ≡ 0                   NFDM-OT (matching + curvature)
nfbm           neural bridge (SPEC §1.5)       L_diff + L_rec (+ obstacle)
vdm            VP, linear or cosine γ          NELBO (VDM's continuous loss)
vdm_learned    VP, learned monotone γ          NELBO
flow_matching  straight path                   NELBO
============== =============================== =================================

``config.model.forward_sigma`` says what the neural process's network sets: ``'base'`` only
μ, with σ the untrained process's (nfdm's default), ``'learned'`` μ and σ (the paper's;
nfdm_ot's default; the bridge's only choice). Trained on the NELBO, a learned σ inflates
5–10× and costs test likelihood on the digits (issue #9).

Predictors (``config.model.parameterization``): ``edm`` (:func:`drifts.edm_preconditioned`,
the default of the neural models, scaled by the untrained process; needs
``config.model.data_mean`` / ``data_std``), ``preconditioned`` (the paper's
x̂ = (1 − t) z + (t + δ) NN) and ``eps`` (VP models: :func:`drifts.eps_predictor`).

Batches are dicts: ``"x"`` the data (uint8 pixels for the ``discrete`` and ``dequantized``
conventions, float for ``continuous``) and, for bridges, ``"x1"`` the source sample.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nfdm_jax import decoders, drifts, forward, losses, nets, schedules, volatility

Array = jax.Array
Params = dict[str, Any]
Batch = dict[str, Array]

VOLATILITY_BASES = {"neural_matched": volatility.neural_matched,
                    "delta_matched": volatility.delta_matched}
_NETWORK_IDS = {"forward": 0, "predictor": 1}
_ALL_G = ("learned", "neural_matched", "delta_matched")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of :data:`MODELS`.

    Attributes:
      forward: ``forward(model, params, x1, net) -> ForwardFn``; ``net(x, t, cond)`` is the
        bound forward network (None when ``forward_net`` is False).
      objective: ``"nelbo"``, ``"ot"`` (NFDM-OT) or ``"bridge"`` (NFBM).
      volatilities: the allowed ``config.model.volatility`` values.
      parameterizations: the allowed ``config.model.parameterization`` values.
      forward_net: whether the model has (and trains) a forward network.
      base: the untrained forward process, for the ``edm`` scalings (None: ``forward``).
      vp: a VP process with a log-SNR schedule; its decoder width is that schedule's
        σ_0 / α_0 on z_0 / α_0 (VDM), not δ.
      sigma: what the forward network sets unless ``config.model.forward_sigma`` says:
        ``"learned"`` (μ and σ) or ``"base"`` (μ only; σ stays the untrained process's).
    """

    forward: Callable[["Model", "Params", Optional[Array], Any], forward.ForwardFn]
    objective: str
    volatilities: tuple[str, ...]
    parameterizations: tuple[str, ...]
    base: Optional[Callable[["Model", "Params", Optional[Array], Any], forward.ForwardFn]] = None
    forward_net: bool = False
    vp: bool = False
    sigma: str = "learned"

    def base_process(self, model: "Model", params: "Params",
                     x1: Optional[Array]) -> forward.ForwardFn:
        """The linear process that sets the ``edm`` scalings: ``base`` if given (the
        untrained process of a learned one), else the model's own (fixed) process."""
        return (self.base or self.forward)(model, params, x1, None)


def _neural(model: "Model", params: "Params", x1: Optional[Array], net: Any) -> forward.ForwardFn:
    if model.forward_sigma == "base":
        # Only the mean is learned; log σ stays the untrained (1 − t) log δ.
        def mean_only(x: Array, t: Array) -> tuple[Array, Array]:
            m_bar = net(x, t, None)[0]
            return m_bar, jnp.zeros_like(m_bar)

        return forward.neural_forward(mean_only, model.m.delta)
    return forward.neural_forward(lambda x, t: net(x, t, None), model.m.delta)


def _frozen(model: "Model", params: "Params", x1: Optional[Array], net: Any) -> forward.ForwardFn:
    # The untrained process exactly: μ = (1 − t) x, log σ = (1 − t) log δ.
    zero = lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x))  # noqa: E731
    return forward.neural_forward(zero, model.m.delta)


def _bridge(model: "Model", params: "Params", x1: Optional[Array], net: Any) -> forward.ForwardFn:
    bridge = forward.bridge_forward(lambda x0, c, t: net(x0, t, c), model.m.delta)
    return forward.with_pinned_ends(lambda x, t: bridge(x, x1, t), forward.pinned_ends(bridge))


def _zero_bridge(model: "Model", params: "Params", x1: Optional[Array],
                 net: Any) -> forward.ForwardFn:
    return _bridge(model, params, x1, lambda x0, t, c: (jnp.zeros_like(x0), jnp.zeros_like(x0)))


def _vp(model: "Model", params: "Params", x1: Optional[Array], net: Any) -> forward.ForwardFn:
    return forward.vp_forward(model.gamma_fn(params))


def _straight(model: "Model", params: "Params", x1: Optional[Array],
              net: Any) -> forward.ForwardFn:
    return forward.straight_forward(model.m.delta)


_PRED = ("edm", "preconditioned")
MODELS: dict[str, ModelSpec] = {
    # σ held by default: learned on the NELBO it inflates 5–10× and costs likelihood (#9).
    "nfdm": ModelSpec(_neural, "nelbo", _ALL_G, _PRED, base=_frozen, forward_net=True,
                      sigma="base"),
    "nfdm_frozen": ModelSpec(_frozen, "nelbo", _ALL_G, _PRED),
    "nfdm_ot": ModelSpec(_neural, "ot", ("zero",), _PRED, base=_frozen, forward_net=True),
    "nfbm": ModelSpec(_bridge, "bridge", ("learned", "delta_matched"), _PRED,
                      base=_zero_bridge, forward_net=True),
    "vdm": ModelSpec(_vp, "nelbo", ("vp_matching",) + _ALL_G, _PRED + ("eps",), vp=True),
    "vdm_learned": ModelSpec(_vp, "nelbo", ("vp_matching",) + _ALL_G, _PRED + ("eps",), vp=True),
    "flow_matching": ModelSpec(_straight, "nelbo", _ALL_G, _PRED),
}


def resolve_forward_sigma(name: str, value: Optional[str]) -> str:
    """What model ``name``'s forward network sets under ``config.model.forward_sigma=value``:
    ``value`` itself, or the model's default (:attr:`ModelSpec.sigma`) when it is None."""
    return value or MODELS[name].sigma


class Model:
    """The networks, processes and objective of one ``config`` (see the module docstring).

    Args:
      config: the full experiment config, validated (:mod:`nfdm_jax.train.validation`);
        reads ``config.model``, ``config.net`` and ``config.data.convention``.
      shape: the shape of one example of ``"x"``, e.g. ``(32, 32, 3)`` or ``(2,)``.
    """

    def __init__(self, config: ml_collections.ConfigDict, shape: tuple[int, ...]):
        self.config = config
        self.m = config.model
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.name = self.m.name
        self.spec = MODELS[self.name]
        self.forward_sigma = resolve_forward_sigma(self.name, self.m.forward_sigma)
        self.bridge = self.spec.objective == "bridge"
        self.convention = config.data.convention
        self.log_jacobian = decoders.log_jacobian_per_dim(self.convention)
        self.predictor_net, self.forward_net = _make_networks(config, self.shape, self.bridge)
        self.volatility_net = nets.VolatilityMLP() if self.m.volatility == "learned" else None
        if self.m.parameterization == "edm":
            self.data_mean, self.data_std = (jnp.asarray(tuple(v), jnp.float32)
                                             for v in (self.m.data_mean, self.m.data_std))

    # ---------------------------------------------------------------- parameters

    def init(self, key: Array, batch: Batch) -> Params:
        """Parameters ``{"forward", "predictor", "volatility", "gamma"}`` for ``batch``'s
        shapes; a model without a part has ``{}`` there."""
        kf, kp, kv, kg = jax.random.split(key, 4)
        x = self.preprocess(batch["x"], kf)
        t = jnp.full((x.shape[0],), 0.5, x.dtype)
        cond = self.condition(batch)
        params: Params = {"forward": {}, "predictor": {}, "volatility": {}, "gamma": {}}
        # The predictor's input carries 2 K features per channel (model.fourier_exponents).
        z_in = jnp.zeros(x.shape[:-1] + (x.shape[-1] * (1 + 2 * len(self.m.fourier_exponents)),))
        params["predictor"] = self.predictor_net.init(kp, z_in, t, cond)["params"]
        if self.spec.forward_net:
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
        return schedules.linear_gamma(self.m.gamma_min, self.m.gamma_max)

    def forward_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                   dropout_key: Optional[Array] = None) -> forward.ForwardFn:
        """``forward(x, t) -> (mu, log_sigma)``; for bridges closed over the source ``x1``."""
        if not self.spec.forward_net:
            return self.spec.forward(self, params, x1, None)
        rngs = self._rngs(train, dropout_key, "forward")

        def net(x: Array, t: Array, cond: Optional[Array] = None) -> tuple[Array, Array]:
            return self.forward_net.apply({"params": params["forward"]}, x, t, cond,
                                          train=train, rngs=rngs)

        return self.spec.forward(self, params, x1, net)

    def predictor_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                     dropout_key: Optional[Array] = None) -> drifts.Predictor:
        """``predictor(z, t) -> x_hat`` ``[B, *D]``; for bridges closed over the source ``x1``."""
        rngs = self._rngs(train, dropout_key, "predictor")

        def net(z: Array, t: Array) -> Array:
            return self.predictor_net.apply({"params": params["predictor"]}, z, t, x1,
                                            train=train, rngs=rngs)

        kind = self.m.parameterization
        if kind == "edm":
            base = self.spec.base_process(self, params, x1)
            return drifts.edm_preconditioned(net, base, self.data_mean, self.data_std,
                                             tuple(self.m.fourier_exponents))
        if kind == "preconditioned":
            return drifts.preconditioned(net, self.m.delta)
        return drifts.eps_predictor(net, self.gamma_fn(params), tuple(self.m.fourier_exponents))

    def decoder_fn(self, params: Params) -> decoders.DecoderNLL:
        """−log p(x | z_0): width δ, or for VP models their schedule's σ_0 / α_0 on z_0 / α_0
        (VDM), so that the decoder matches q(z_0 | x) whatever γ(0) is (or learns)."""
        if not self.spec.vp:
            return decoders.make_decoder(self.convention, self.m.delta)
        g0 = self.gamma_fn(params)(jnp.zeros(()))
        inv_alpha0 = jnp.exp(-0.5 * jax.nn.log_sigmoid(-g0))
        nll = decoders.make_decoder(self.convention, jnp.exp(0.5 * g0))
        return lambda z0, x: nll(z0 * inv_alpha0, x)

    def volatility_fn(self, params: Params) -> volatility.Volatility:
        """``volatility(t) -> g²`` ``[B]``."""
        kind = self.m.volatility
        if kind == "zero":
            return volatility.zero()
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
        """Per-example objective terms, each ``[B]``: the loss terms, ``"total"`` and ``"bpd"``,
        with t stratified over the batch.

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
        t, eps = losses.sample_t_eps(kt, x)
        objective = self.spec.objective
        if objective == "ot":
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
                                     vol, x, x1, t, eps, decoder_nll=self.decoder_fn(params),
                                     obstacle=obstacle, obstacle_weight=self.m.obstacle_weight)
        else:
            terms = losses.nelbo_terms(fwd, pred, vol, x, t, eps,
                                       decoder_nll=self.decoder_fn(params))
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


def _make_networks(config: ml_collections.ConfigDict, shape: tuple[int, ...],
                   bridge: bool) -> tuple[nn.Module, nn.Module]:
    """(predictor, forward) Flax modules: MLPs for vectors, U-Nets for images.

    The forward network embeds t · ``config.net.forward_time_scale``: its ∂/∂t enters the
    drift, and the predictors' usual 1000 amplifies it up to 1000× (issue #9).
    """
    n = config.net
    if len(shape) == 1:
        predictor, fwd = nets.make_2d_networks(n.hidden, n.depth)
        # Zero output is the intended start of an ε-network only (see PredictorMLP2D).
        predictor = predictor.clone(
            zero_init_output=config.model.parameterization == "eps")
    else:
        preset = dataclasses.replace(nets.get_preset(n.preset), image_shape=tuple(shape),
                                     cond_channels=shape[-1] if bridge else 0)
        predictor, fwd = nets.make_networks(preset, jnp.dtype(n.dtype), n.remat, n.conv,
                                            n.forward_remat)
        # Input features (model.fourier_exponents) widen the input, not the output.
        predictor = predictor.clone(out_channels=shape[-1])
    return predictor, fwd.clone(time_scale=n.forward_time_scale)

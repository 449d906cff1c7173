"""Models from configs: Flax networks bound to the pure processes and losses of nfdm_jax.

A :class:`Model` owns the Flax modules of one experiment and exposes pure functions of a
parameter dict ``{"forward", "predictor", "volatility", "gamma"}`` (absent parts are ``{}``),
and the plain callables that samplers and likelihoods take (``*_fn``).

Models (``config.model.name``) are the entries of :data:`MODELS`, one :class:`ModelSpec`
each: its forward process (built from :class:`Pieces`), its objective (a function of
:class:`LossInputs`), its decoder width, and the volatilities and predictor parameterizations
it allows (:func:`nfdm_jax.train.validation.check_model` derives its rules from the table).
Adding a model is one entry plus its test.

``config.model.forward_sigma`` says what the neural process's network sets: ``'base'`` only
μ, with σ the untrained process's (nfdm's and nfdm_ot's default: a learned σ inflates 5–10×
on the NELBO, issue #9), ``'learned'`` μ and σ (the paper's; the bridge's only choice).
The untrained process is the paper's σ = δ^(1 − t), or for NFDM-OT the straight path's
t + (1 − t) δ (``forward.neural_forward``'s ``straight``).

Predictors (``config.model.parameterization``): ``edm`` (scaled by the untrained process),
``preconditioned`` (the paper's) and ``eps`` (VP models); see :meth:`Model.predictor_fn`.
Batches are dicts: ``"x"`` the data (uint8 pixels, or float for the ``continuous``
convention) and, for bridges, ``"x1"`` the source sample.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from nfdm_jax import decoders, drifts, forward, losses, nets, schedules, volatility

Array = jax.Array
Params = dict[str, Any]
Batch = dict[str, Array]
# The bound forward network: (x, t, cond) -> (m̄, l̄), each [B, *D].
ForwardNet = Callable[[Array, Array, Optional[Array]], tuple[Array, Array]]

VOLATILITY_BASES = {"neural_matched": volatility.neural_matched,
                    "straight_matched": volatility.straight_matched,
                    "delta_matched": volatility.delta_matched}
_NETWORK_IDS = {"forward": 0, "predictor": 1}
_ALL_G = ("learned", "neural_matched", "straight_matched", "delta_matched")


class Pieces(NamedTuple):
    """What a forward-process factory of :data:`MODELS` builds from."""

    delta: float                            # σ at t = 0 of the neural and straight processes
    gamma: Optional[schedules.Schedule]     # the VP models' log-SNR schedule γ(t)
    net: Optional[ForwardNet]               # the bound forward network (None: untrained)
    x1: Optional[Array]                     # a bridge's source sample ``[B, *D]``
    sigma: str                              # what ``net`` sets: "learned" (μ, σ) | "base" (μ)


class LossInputs(NamedTuple):
    """What an objective of :data:`MODELS` evaluates: the model's callables and one draw."""

    forward: forward.ForwardFn
    predictor: drifts.Predictor
    volatility: volatility.Volatility
    decoder_nll: decoders.DecoderNLL
    x: Array                                # data in the model's convention ``[B, *D]``
    x1: Optional[Array]                     # a bridge's source ``[B, *D]``
    t: Array                                # ``[B]``
    eps: Array                              # ``[B, *D]``


ForwardFactory = Callable[[Pieces], forward.ForwardFn]
# objective(config.model, inputs) -> a NamedTuple of per-example terms [B] with .total (the
# training objective) and .bound (the likelihood bound in nats).
Objective = Callable[[ml_collections.ConfigDict, LossInputs], Any]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of :data:`MODELS`.

    Attributes:
      forward: the forward process from its :class:`Pieces`.
      objective: the per-example loss terms from :class:`LossInputs`.
      volatilities: the allowed ``config.model.volatility`` values.
      parameterizations: the allowed ``config.model.parameterization`` values.
      base: the untrained forward process, for the ``edm`` scalings (None: ``forward``).
      forward_net: whether the model has (and trains) a forward network.
      vp: a VP process with a log-SNR schedule; its decoder width is that schedule's
        σ_0 / α_0 on z_0 / α_0 (VDM), not δ.
      sigma: what the forward network sets unless ``config.model.forward_sigma`` says:
        ``"learned"`` (μ and σ) or ``"base"`` (μ only; σ stays the untrained process's).
      bridge: a bridge between the data and a source sample ``"x1"`` it is conditioned on.
    """

    forward: ForwardFactory
    objective: Objective
    volatilities: tuple[str, ...]
    parameterizations: tuple[str, ...]
    base: Optional[ForwardFactory] = None
    forward_net: bool = False
    vp: bool = False
    sigma: str = "learned"
    bridge: bool = False

    def base_process(self, pieces: Pieces) -> forward.ForwardFn:
        """The linear process that sets the ``edm`` scalings: ``base`` if given (the
        untrained process of a learned one), else the model's own (fixed) process."""
        return (self.base or self.forward)(pieces._replace(net=None))


def _neural(p: Pieces, straight: bool = False) -> forward.ForwardFn:
    if p.sigma == "base":
        # Only the mean is learned; log σ stays the untrained process's.
        def mean_only(x: Array, t: Array) -> tuple[Array, Array]:
            m_bar = p.net(x, t, None)[0]
            return m_bar, jnp.zeros_like(m_bar)

        return forward.neural_forward(mean_only, p.delta, straight)
    return forward.neural_forward(lambda x, t: p.net(x, t, None), p.delta, straight)


# NFDM-OT starts on the straight path: under δ^(1 − t) every ODE path accelerates by (log δ)² z.
_neural_straight = functools.partial(_neural, straight=True)


def _frozen(p: Pieces) -> forward.ForwardFn:
    # The untrained process exactly: μ = (1 − t) x, log σ = (1 − t) log δ.
    zero = lambda x, t: (jnp.zeros_like(x), jnp.zeros_like(x))  # noqa: E731
    return forward.neural_forward(zero, p.delta)


def _bridge(p: Pieces) -> forward.ForwardFn:
    net = p.net or (lambda x0, t, c: (jnp.zeros_like(x0), jnp.zeros_like(x0)))  # untrained
    bridge = forward.bridge_forward(lambda x0, c, t: net(x0, t, c), p.delta)
    return forward.with_pinned_ends(lambda x, t: bridge(x, p.x1, t), forward.pinned_ends(bridge))


def _vp(p: Pieces) -> forward.ForwardFn:
    return forward.vp_forward(p.gamma)


def _straight(p: Pieces) -> forward.ForwardFn:
    return forward.straight_forward(p.delta)


def _nelbo(m: ml_collections.ConfigDict, i: LossInputs) -> losses.NELBOTerms:
    return losses.nelbo_terms(i.forward, i.predictor, i.volatility, i.x, i.t, i.eps,
                              decoder_nll=i.decoder_nll)


def _nfdm_ot(m: ml_collections.ConfigDict, i: LossInputs) -> losses.OTTerms:
    return losses.nfdm_ot_terms(i.forward, i.predictor, i.volatility, i.x, i.t, i.eps,
                                decoder_nll=i.decoder_nll, curvature_weight=m.curvature_weight)


def _nfbm(m: ml_collections.ConfigDict, i: LossInputs) -> losses.BridgeTerms:
    obstacle = None
    if m.obstacle_weight > 0:
        obstacle = losses.disc_obstacle(jnp.asarray(m.obstacle_centre, jnp.float32),
                                        m.obstacle_radius)
    # The bridge's callables close over x1 already; nfbm_loss passes it explicitly.
    fwd, pred = i.forward, i.predictor
    return losses.nfbm_loss(forward.with_pinned_ends(lambda x0, _, tt: fwd(x0, tt),
                                                     forward.pinned_ends(fwd)),
                            lambda z, tt, _: pred(z, tt), i.volatility, i.x, i.x1, i.t, i.eps,
                            decoder_nll=i.decoder_nll, obstacle=obstacle,
                            obstacle_weight=m.obstacle_weight)


_PRED = ("edm", "preconditioned")
MODELS: dict[str, ModelSpec] = {
    # The neural process (SPEC §1.1) on the NELBO. σ held by default: learned on the NELBO
    # it inflates 5–10× and costs likelihood (issue #9).
    "nfdm": ModelSpec(_neural, _nelbo, _ALL_G, _PRED, base=_frozen, forward_net=True,
                      sigma="base"),
    # The control: the same process with its network held at 0 (nothing learned in q).
    "nfdm_frozen": ModelSpec(_frozen, _nelbo, _ALL_G, _PRED),
    # NFDM-OT (SPEC §1.4): the NELBO + λ · the ODE's curvature, on the straight base path.
    # σ held: 1.5–2.3× closer to the ring than learned at 6 000 steps (reports/few_step).
    "nfdm_ot": ModelSpec(_neural_straight, _nfdm_ot, _ALL_G, _PRED, base=_straight,
                         forward_net=True, sigma="base"),
    # The neural bridge (SPEC §1.5): L_diff + L_rec (+ obstacle).
    "nfbm": ModelSpec(_bridge, _nfbm, ("learned", "delta_matched"), _PRED, forward_net=True,
                      bridge=True),
    # VP with a linear γ: VDM's continuous loss; vdm_learned learns a monotone γ.
    "vdm": ModelSpec(_vp, _nelbo, ("vp_matching",) + _ALL_G, _PRED + ("eps",), vp=True),
    "vdm_learned": ModelSpec(_vp, _nelbo, ("vp_matching",) + _ALL_G, _PRED + ("eps",), vp=True),
    # The straight path μ = (1 − t) x, σ = t + (1 − t) δ (flow matching).
    "flow_matching": ModelSpec(_straight, _nelbo, _ALL_G, _PRED),
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
        self.bridge = self.spec.bridge
        self.convention = config.data.convention
        self.log_jacobian = decoders.log_jacobian_per_dim(self.convention)
        self.predictor_net, self.forward_net = _make_networks(config, self.shape, self.bridge)
        self.volatility_net = nets.VolatilityMLP() if self.m.volatility == "learned" else None
        if self.m.parameterization == "edm":
            self.data_mean, self.data_std = (jnp.asarray(tuple(v), jnp.float32)
                                             for v in (self.m.data_mean, self.m.data_std))

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

    def _rngs(self, train: bool, dropout_key: Optional[Array], name: str) -> dict[str, Array]:
        # Each network gets its own dropout stream; none is needed in evaluation.
        use = train and dropout_key is not None
        return {"dropout": jax.random.fold_in(dropout_key, _NETWORK_IDS[name])} if use else {}

    def gamma_fn(self, params: Params) -> schedules.Schedule:
        """The log-SNR schedule γ(t) of the VP models."""
        if self.name == "vdm_learned":
            return schedules.monotone_gamma(params["gamma"])
        return schedules.linear_gamma(self.m.gamma_min, self.m.gamma_max)

    def forward_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                   dropout_key: Optional[Array] = None) -> forward.ForwardFn:
        """``forward(x, t) -> (mu, log_sigma)``; for bridges closed over the source ``x1``."""
        if not self.spec.forward_net:
            return self.spec.forward(self._pieces(params, x1))
        rngs = self._rngs(train, dropout_key, "forward")

        def net(x: Array, t: Array, cond: Optional[Array] = None) -> tuple[Array, Array]:
            return self.forward_net.apply({"params": params["forward"]}, x, t, cond,
                                          train=train, rngs=rngs)

        return self.spec.forward(self._pieces(params, x1, net))

    def base_fn(self, params: Params, x1: Optional[Array] = None) -> forward.ForwardFn:
        """The linear process that sets the ``edm`` scalings (:meth:`ModelSpec.base_process`)."""
        return self.spec.base_process(self._pieces(params, x1))

    def _pieces(self, params: Params, x1: Optional[Array],
                net: Optional[ForwardNet] = None) -> Pieces:
        return Pieces(self.m.delta, self.gamma_fn(params) if self.spec.vp else None, net, x1,
                      self.forward_sigma)

    def predictor_fn(self, params: Params, x1: Optional[Array] = None, *, train: bool = False,
                     dropout_key: Optional[Array] = None) -> drifts.Predictor:
        """``predictor(z, t) -> x_hat`` ``[B, *D]``; for bridges closed over the source ``x1``."""
        rngs = self._rngs(train, dropout_key, "predictor")

        def net(z: Array, t: Array) -> Array:
            return self.predictor_net.apply({"params": params["predictor"]}, z, t, x1,
                                            train=train, rngs=rngs)

        kind = self.m.parameterization
        if kind == "edm":
            return drifts.edm_preconditioned(net, self.base_fn(params, x1), self.data_mean,
                                             self.data_std, tuple(self.m.fourier_exponents))
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
        if kind in ("zero", "vp_matching"):
            return volatility.zero() if kind == "zero" else volatility.vp_matching(
                self.gamma_fn(params))
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

    def per_example(self, params: Params, batch: Batch, key: Array, train: bool = False,
                    dropout_key: Optional[Array] = None) -> dict[str, Array]:
        """Per-example objective terms, each ``[B]``: the loss terms, ``"total"`` and ``"bpd"``,
        with t stratified over the batch.

        ``"total"`` is the training objective; ``"bpd"`` is the bound's bits per dimension
        (``terms.bound``, Jacobian of the convention included), which leaves out penalties
        (NFDM-OT's curvature, NFBM's obstacle).
        """
        kdata, kt = jax.random.split(key)
        x = self.preprocess(batch["x"], kdata)
        x1 = self.condition(batch)
        fwd = self.forward_fn(params, x1, train=train, dropout_key=dropout_key)
        pred = self.predictor_fn(params, x1, train=train, dropout_key=dropout_key)
        vol = self.volatility_fn(params)
        t, eps = losses.sample_t_eps(kt, x)
        terms = self.spec.objective(self.m, LossInputs(fwd, pred, vol, self.decoder_fn(params),
                                                       x, x1, t, eps))
        return terms._asdict() | {"total": terms.total, "bpd": losses.bits_per_dim(
            terms.bound, self.dim, self.log_jacobian)}

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
        predictor = predictor.clone(zero_init_output=config.model.parameterization == "eps")
    else:
        preset = dataclasses.replace(nets.get_preset(n.preset), image_shape=tuple(shape),
                                     cond_channels=shape[-1] if bridge else 0)
        predictor, fwd = nets.make_networks(preset, jnp.dtype(n.dtype), n.remat, n.conv,
                                            n.forward_remat)
        # Input features (model.fourier_exponents) widen the input, not the output.
        predictor = predictor.clone(out_channels=shape[-1])
    return predictor, fwd.clone(time_scale=n.forward_time_scale)

"""Samplers of the generative process as pure, jittable functions (SPEC §1.2).

Time runs from ``t_start = 1`` (noise, z_1 ~ N(0, I)) down to ``t_end`` (default 0,
the data end) on a grid of ``num_steps`` intervals, uniform or denser towards the data
(:func:`time_grid`'s ``rho``). Every sampler takes the
model as callables and arrays only, so it works with any network library:

* ``drift(z, t) -> dz/dt`` with ``z`` ``[B, *D]`` and ``t`` ``[B]`` — for the SDE,
  f̂ = ``drifts.generative_drift(forward, predictor, volatility)``; for the ODE,
  the same with ``volatility.zero()``;
* ``volatility(t) -> g2`` ``[B]`` (squared diffusion coefficient), SDE only.

Fixed-step samplers (:func:`euler_maruyama`, :func:`euler`, :func:`heun`,
:func:`ode_sample`) are ``lax.scan`` loops: the number of steps is static (a Python
int), so wrap them in ``jax.jit`` with ``num_steps``/``nfe`` bound, e.g.
``jax.jit(functools.partial(euler, drift, num_steps=100))``. :func:`adaptive_sample`
uses diffrax (Tsit5/Dopri5 with a PID step-size controller).

Sharding: the samplers are elementwise in the batch (given a per-example drift),
so calling them under ``jax.jit`` with ``z`` sharded over a data mesh axis keeps
the result sharded the same way; nothing here gathers the batch.

Bridges (NFBM, SPEC §1.5): the reverse process starts at z_1 = x_1, the source
batch, and the drift closes over x_1; see :func:`bridge_generative_drift`, then
run any sampler from ``z = x1``.
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Optional, Union

import diffrax
import jax
import jax.numpy as jnp

from nfdm_jax.drifts import Drift, generative_drift
from nfdm_jax.ops import bcast_time
from nfdm_jax.volatility import Volatility

Array = jax.Array
Solver = Literal["tsit5", "dopri5"]

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
# Tsit5 and Dopri5 are 7-stage FSAL methods: 6 new drift evaluations per step,
# accepted or rejected (a rejected step reuses the stored first stage).
_NEW_EVALS_PER_STEP = 6
# Plus one more per solve, as counted at run time with a counting drift
# (tests/test_sampling.py checks the formula against the count).
_INITIAL_EVALS = 1


class Trajectory(NamedTuple):
    """Sampler states on its time grid.

    ``ts``: ``[T]`` times, ``ts[0] = t_start``; ``zs``: ``[T, B, *D]`` states,
    ``zs[0]`` the initial state and ``zs[-1]`` the final one.
    """

    ts: Array
    zs: Array


def sample_prior(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Array:
    """z_1 ~ N(0, I) of the given shape ``[B, *D]``."""
    return jax.random.normal(key, shape, dtype)


def time_grid(num_steps: int, t_start: float = 1.0, t_end: float = 0.0,
              dtype: jnp.dtype = jnp.float32, rho: float = 1.0) -> Array:
    """Grid t_i = t_end + (t_start − t_end)(1 − i / N)^ρ, shape ``[num_steps + 1]``.

    ρ = 1 is uniform; ρ > 1 puts the steps closer together towards ``t_end`` (the data
    end, where the drift of a diffusion changes fastest), as EDM's ρ-grid does in σ.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    u = jnp.power(jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype), rho)
    return (t_end + (t_start - t_end) * u).astype(dtype)


def _batch_time(t: Array, z: Array) -> Array:
    """A scalar time broadcast to the per-example times ``[B]`` the drift expects."""
    return jnp.full((z.shape[0],), t, z.dtype)


def _euler_update(drift: Drift, z: Array, t: Array, t_next: Array) -> Array:
    """One Euler step of dz/dt = drift(z, t) from scalar time t to t_next."""
    return z + (t_next - t) * drift(z, _batch_time(t, z))


def _run(step: Callable[[Array, Array, Array, Optional[Array]], Array], z: Array, ts: Array,
         extras: Optional[Array], return_trajectory: bool) -> Union[Array, Trajectory]:
    """Scans ``step(z, t, t_next, extra)`` over consecutive grid times (``extra``: per-step
    inputs with a leading axis, or None)."""

    def body(z: Array, inputs: tuple) -> tuple[Array, Optional[Array]]:
        z_next = step(z, *inputs)
        return z_next, (z_next if return_trajectory else None)

    z_end, zs = jax.lax.scan(body, z, (ts[:-1], ts[1:], extras))
    if not return_trajectory:
        return z_end
    return Trajectory(ts, jnp.concatenate([z[None], zs], axis=0))


def euler_maruyama(drift: Drift, volatility: Volatility, z: Array, key: Array, *,
                   num_steps: int, t_start: float = 1.0, t_end: float = 0.0,
                   rho: float = 1.0, return_trajectory: bool = False
                   ) -> Union[Array, Trajectory]:
    """Euler–Maruyama for the reverse SDE dz = f̂(z, t) dt + g(t) dw̄ from t_start to t_end.

    One step from t to t − h: z ← z − h f̂(z, t) + g(t) √h ξ, ξ ~ N(0, I); noise is
    added at every step, so the result is a sample of z at ``t_end`` (for t_end = 0,
    of q(z_0 | x) ≈ N(x, δ²)), not a denoised x̂. NFE = ``num_steps``.

    Args:
      drift: ``drift(z, t) -> f̂`` ``[B, *D]``.
      volatility: ``volatility(t) -> g2`` ``[B]``.
      z: initial state ``[B, *D]`` at ``t_start`` (e.g. :func:`sample_prior`).
      key: PRNG key for the Brownian increments.
      num_steps: number of steps (static).
      rho: the grid's exponent (:func:`time_grid`; 1 = uniform).
      return_trajectory: return a :class:`Trajectory` instead of the final state.

    Returns:
      z at ``t_end`` ``[B, *D]``, or the :class:`Trajectory`.
    """
    ts = time_grid(num_steps, t_start, t_end, z.dtype, rho)

    def step(z: Array, t: Array, t_next: Array, k: Array) -> Array:
        tb = _batch_time(t, z)
        h = t_next - t  # negative: time runs backwards
        noise = jax.random.normal(k, z.shape, z.dtype)
        g = jnp.sqrt(bcast_time(volatility(tb), z) * jnp.abs(h))
        return z + h * drift(z, tb) + g * noise

    return _run(step, z, ts, jax.random.split(key, num_steps), return_trajectory)


def euler(drift: Drift, z: Array, *, num_steps: int, t_start: float = 1.0,
          t_end: float = 0.0, rho: float = 1.0,
          return_trajectory: bool = False) -> Union[Array, Trajectory]:
    """Euler's method for the ODE dz/dt = drift(z, t); NFE = ``num_steps``.

    Args and returns as :func:`euler_maruyama`, without volatility and key; ``rho``: the
    grid of :func:`time_grid`.
    """
    ts = time_grid(num_steps, t_start, t_end, z.dtype, rho)

    def step(z: Array, t: Array, t_next: Array, _: None) -> Array:
        return _euler_update(drift, z, t, t_next)

    return _run(step, z, ts, None, return_trajectory)


def heun_nfe(num_steps: int, final_euler: bool = True) -> int:
    """Drift evaluations of :func:`heun`: 2 per step, 1 for a final Euler step."""
    return 2 * num_steps - int(final_euler)


def heun(drift: Drift, z: Array, *, num_steps: int, final_euler: bool = True,
         t_start: float = 1.0, t_end: float = 0.0, rho: float = 1.0,
         return_trajectory: bool = False) -> Union[Array, Trajectory]:
    """Heun's second-order method (explicit trapezoid) for dz/dt = drift(z, t).

    Each step evaluates the drift at both ends of the interval. With ``final_euler``
    (default) the last step is a plain Euler step, as in EDM: the drift at the data
    end is never evaluated, and NFE = 2·num_steps − 1 (:func:`heun_nfe`); otherwise
    NFE = 2·num_steps. Args and returns as :func:`euler`.
    """
    ts = time_grid(num_steps, t_start, t_end, z.dtype, rho)

    def heun_step(z: Array, t: Array, t_next: Array, _: None) -> Array:
        h = t_next - t
        d = drift(z, _batch_time(t, z))
        d_next = drift(z + h * d, _batch_time(t_next, z))
        return z + 0.5 * h * (d + d_next)

    if not final_euler:
        return _run(heun_step, z, ts, None, return_trajectory)
    head = _run(heun_step, z, ts[:-1], None, return_trajectory)
    z_pre = head.zs[-1] if return_trajectory else head
    z_end = _euler_update(drift, z_pre, ts[-2], ts[-1])
    if not return_trajectory:
        return z_end
    return Trajectory(ts, jnp.concatenate([head.zs, z_end[None]], axis=0))


def ode_sample(drift: Drift, z: Array, *, nfe: int, method: Literal["euler", "heun"] = "heun",
               t_start: float = 1.0, t_end: float = 0.0, rho: float = 1.0,
               return_trajectory: bool = False) -> Union[Array, Trajectory]:
    """Fixed-step ODE sampling with exactly ``nfe`` drift evaluations on the grid of
    :func:`time_grid` with exponent ``rho``.

    Euler: ``nfe`` steps. Heun: odd ``nfe`` → (nfe + 1)/2 steps, the last one Euler;
    even ``nfe`` → nfe/2 full Heun steps.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    kwargs = dict(t_start=t_start, t_end=t_end, rho=rho, return_trajectory=return_trajectory)
    if method == "euler":
        return euler(drift, z, num_steps=nfe, **kwargs)
    if method == "heun":
        return heun(drift, z, num_steps=(nfe + 1) // 2, final_euler=nfe % 2 == 1, **kwargs)
    raise ValueError(f"Unknown ODE method {method!r}; use 'euler' or 'heun'.")


class ODESolution(NamedTuple):
    """Result of an adaptive solve.

    ``y``: the state at ``t1``; ``trajectory``: states at ``save_ts`` (a
    :class:`Trajectory` whose ``zs`` has a leading time axis) or ``None``;
    ``num_steps``: solver steps taken, accepted and rejected (int scalar);
    ``nfe``: vector-field evaluations, 6·num_steps + 1 for Tsit5/Dopri5 (int scalar).
    """

    y: jax.typing.ArrayLike
    trajectory: Optional[Trajectory]
    num_steps: Array
    nfe: Array


def odeint(vector_field: Callable[[Array, object], object], y0: object, *, t0: float,
           t1: float, solver: Solver = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 4096, save_ts: Optional[Array] = None) -> ODESolution:
    """Adaptive solve of dy/dt = vector_field(t, y) from t0 to t1 (either direction).

    The low-level entry point shared by :func:`adaptive_sample` and the likelihood.

    Args:
      vector_field: ``vector_field(t, y) -> dy/dt`` with scalar ``t`` and any pytree ``y``.
      y0: initial state (pytree of arrays).
      t0, t1: integration limits; ``t1 < t0`` integrates backwards.
      solver: ``"dopri5"`` or ``"tsit5"`` (both 5th order with embedded error estimate).
      rtol, atol: tolerances of the PID controller; the error norm is the RMS over the
        whole state, so one step size is shared by every example of a batch.
      max_steps: static cap on solver steps; exceeding it raises at run time.
      save_ts: optional times ``[T]`` at which to also return the state.
    """
    if solver not in _SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; use one of {sorted(_SOLVERS)}.")
    saveat = diffrax.SaveAt(t1=True) if save_ts is None else diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(t1=True), diffrax.SubSaveAt(ts=save_ts)])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, _: vector_field(t, y)), _SOLVERS[solver](),
        t0, t1, None, y0, saveat=saveat,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps)
    if save_ts is None:
        y_end, trajectory = sol.ys, None
    else:
        y_end, ys_saved = sol.ys
        trajectory = Trajectory(save_ts, ys_saved)
    num_steps = sol.stats["num_steps"]
    return ODESolution(jax.tree.map(lambda a: a[0], y_end), trajectory, num_steps,
                       _NEW_EVALS_PER_STEP * num_steps + _INITIAL_EVALS)


def adaptive_sample(drift: Drift, z: Array, *, solver: Solver = "tsit5", rtol: float = 1e-5,
                    atol: float = 1e-5, t_start: float = 1.0, t_end: float = 0.0,
                    max_steps: int = 4096, save_ts: Optional[Array] = None) -> ODESolution:
    """Adaptive ODE sampling of dz/dt = drift(z, t) from ``t_start`` to ``t_end`` (diffrax).

    Returns an :class:`ODESolution` whose ``y`` is z at ``t_end`` ``[B, *D]`` and whose
    ``trajectory.zs`` is ``[T, B, *D]`` at ``save_ts`` if given.
    """
    return odeint(lambda t, y: drift(y, _batch_time(t, y)), z, t0=t_start, t1=t_end,
                  solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, save_ts=save_ts)


def bridge_generative_drift(bridge: Callable[[Array, Array, Array], tuple[Array, Array]],
                            predictor: Callable[[Array, Array, Array], Array],
                            volatility: Volatility, x1: Array) -> Drift:
    """f̂(z, t, x_1) of an NFBM bridge (SPEC §1.5) with the source batch ``x1`` fixed.

    Run any sampler of this module from ``z = x1`` (the process is pinned there), e.g.
    ``euler_maruyama(bridge_generative_drift(bridge, pred, vol, x1), vol, x1, key, ...)``;
    pass ``volatility.zero()`` for the deterministic bridge.

    Args:
      bridge: ``bridge(x0, x1, t) -> (mu, log_sigma)`` (``forward.bridge_forward``).
      predictor: ``predictor(z, t, x1) -> x0_hat``.
      volatility: ``volatility(t) -> g2``.
      x1: source samples ``[B, *D]``.
    """
    return generative_drift(lambda x0, t: bridge(x0, x1, t),
                            lambda z, t: predictor(z, t, x1), volatility)

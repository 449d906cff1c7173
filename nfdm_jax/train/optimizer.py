"""AdamW with warmup, a polynomial or constant schedule and global-norm gradient clipping."""
from __future__ import annotations

import ml_collections
import optax


def learning_rate(o: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``o.lr`` over ``o.warmup_steps``, then constant or linear
    decay to 0 at ``num_steps`` (``o.schedule``: ``"constant"`` | ``"polynomial"``)."""
    if o.schedule == "constant":
        after = optax.constant_schedule(o.lr)
    elif o.schedule == "polynomial":
        after = optax.polynomial_schedule(o.lr, 0.0, 1.0,
                                          max(num_steps - o.warmup_steps, 1))
    else:
        raise ValueError(f"config.optim.schedule={o.schedule!r}; choose 'polynomial' or 'constant'")
    if o.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def make_optimizer(o: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Clip the gradient's norm over *all* parameters to ``o.clip_norm``, then Adam on
    :func:`learning_rate`'s schedule (optax's ε = 1e-8; no weight decay: no config used any).

    One global norm: when one network's gradient is large (NFDM's forward network has 2–4×
    the predictor's), every network's step shrinks with it. Clipping each network's norm on
    its own let the forward network move faster, inflated σ(t) further and gained nothing
    on the digits (reports/README.md, "What was tried and removed").
    """
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.adam(learning_rate(o, num_steps), o.b1, o.b2))

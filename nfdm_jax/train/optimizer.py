"""AdamW with warmup, a polynomial or constant schedule, global-norm clipping and
per-group learning rates (forward / predictor / volatility / gamma). Running statistics
(the ``stats`` group) are not trained: :func:`trainable` drops them before the optimizer."""
from __future__ import annotations

import ml_collections
import optax

GROUPS = ("forward", "predictor", "volatility", "gamma")


def trainable(params: dict) -> dict:
    """The :data:`GROUPS` of ``params`` (or of its gradients): what the optimizer steps.
    The rest (``"stats"``, :meth:`nfdm_jax.models.Model.loss_and_stats`) is set by the train
    step itself, and keeping it out leaves the optimizer state of every model unchanged."""
    return {g: params[g] for g in GROUPS}


def learning_rate(o: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``o.lr`` over ``o.warmup_steps``, then constant or
    polynomial decay to ``o.end_lr`` at ``num_steps``."""
    if o.schedule == "constant":
        after = optax.constant_schedule(o.lr)
    elif o.schedule == "polynomial":
        after = optax.polynomial_schedule(o.lr, o.end_lr, o.power,
                                          max(num_steps - o.warmup_steps, 1))
    else:
        raise ValueError(f"config.optim.schedule={o.schedule!r}; choose 'polynomial' or 'constant'")
    if o.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, o.lr, o.warmup_steps)
    return optax.join_schedules([warmup, after], [o.warmup_steps])


def make_optimizer(o: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Clip gradients, then AdamW per group at ``lr · lr_scale[group]``.

    ``o.clip = "global"`` clips the norm over *all* parameters to ``o.clip_norm`` (one
    group's large gradient, e.g. the forward network's, then shrinks every group's step);
    ``"per_group"`` clips each group's norm separately.

    Params must be a dict keyed by :data:`GROUPS` (as :meth:`Model.init` returns).
    """
    schedule = learning_rate(o, num_steps)

    def adamw(scale: float) -> optax.GradientTransformation:
        return optax.adamw(lambda step: scale * schedule(step), o.b1, o.b2, o.eps,
                           weight_decay=o.weight_decay)

    labels = {g: g for g in GROUPS}
    if o.clip == "per_group":
        return optax.multi_transform(
            {g: optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw(o.lr_scale[g]))
             for g in GROUPS}, labels)
    if o.clip != "global":
        raise ValueError(f"config.optim.clip={o.clip!r}; choose 'global' or 'per_group'")
    per_group = optax.multi_transform({g: adamw(o.lr_scale[g]) for g in GROUPS}, labels)
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), per_group)

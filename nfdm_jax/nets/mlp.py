"""Small MLPs: the learnable volatility g(t) and the networks for 2-D toy data."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nfdm_jax.nets.layers import timestep_embedding


class VolatilityMLP(nn.Module):
    """Raw (unconstrained) volatility as a function of time; the caller maps it to g^2 >= 0.

    Call: `t [] or [B] -> same shape, float32`. The zero-initialised last layer makes the
    raw output exactly 0 at initialisation, so the starting volatility is whatever the
    caller's transform gives at 0.
    """

    hidden: int = 64
    depth: int = 2

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        h = t.reshape(-1, 1)
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden, name=f"dense{i}")(h))
        out = nn.Dense(1, kernel_init=nn.initializers.zeros, name="out")(h)
        return out.reshape(t.shape)


class MLP2D(nn.Module):
    """MLP on low-dimensional data with a sinusoidal time embedding.

    Call: `(x [B, D], t [] or [B] in [0, 1], cond [B, D_c] | None, *, train=False)
    -> [B, out_dim] float32`. `train` is accepted only so that training code can call
    every network the same way; these MLPs have no dropout.

    Attributes:
      hidden: width of the hidden layers.
      depth: number of hidden layers.
      out_dim: output width.
      time_embed_dim: width of the sinusoidal embedding of t * time_scale.
      time_scale: multiplies t in [0, 1] before the sinusoids.
      zero_init_output: zero the last layer so the network outputs 0 at initialisation.
    """

    hidden: int = 256
    depth: int = 3
    out_dim: int = 2
    time_embed_dim: int = 32
    time_scale: float = 1000.0
    zero_init_output: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        del train
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        temb = timestep_embedding(t * self.time_scale, self.time_embed_dim)
        features = [x.astype(jnp.float32), temb]
        if cond is not None:
            features.append(cond.astype(jnp.float32))
        h = jnp.concatenate(features, axis=-1)
        for i in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden, name=f"dense{i}")(h))
        init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
        return nn.Dense(self.out_dim, kernel_init=init, name="out")(h)


class _TimeMLP(nn.Module):
    """Fields shared by the 2-D networks, and the `MLP2D` they wrap (named "mlp")."""

    hidden: int = 256
    depth: int = 3
    time_embed_dim: int = 32
    time_scale: float = 1000.0

    def _mlp(self, out_dim: int, zero_init_output: bool = False) -> MLP2D:
        return MLP2D(self.hidden, self.depth, out_dim, self.time_embed_dim, self.time_scale,
                     zero_init_output=zero_init_output, name="mlp")


class PredictorMLP2D(_TimeMLP):
    """2-D reverse-process predictor: `(x [B, D], t [B], cond [B, D_c] | None, *, train=False)
    -> [B, D] float32`. Attributes as in `MLP2D`, and `zero_init_output` (zero last layer:
    output exactly 0 at initialisation). Zero is the intended start of an ε-predictor; for
    the `edm` predictor it is the linear posterior mean, a saddle from which the ring stays
    at the Gaussian fit (issue #9, reports/fidelity), so models.py zeroes it for `eps` only."""

    zero_init_output: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False
    ) -> jax.Array:
        return self._mlp(x.shape[-1], zero_init_output=self.zero_init_output)(
            x, t, cond, train=train)


class ForwardMLP2D(_TimeMLP):
    """2-D forward-process network: `(x [B, D], t [B], cond [B, D_c] | None, *, train=False)
    -> (m_bar [B, D], l_bar [B, D])`, both exactly 0 at initialisation (zero output layer).
    Attributes as in `MLP2D`."""

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array | None = None, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        out = self._mlp(2 * x.shape[-1], zero_init_output=True)(x, t, cond, train=train)
        m_bar, l_bar = jnp.split(out, 2, axis=-1)
        return m_bar, l_bar

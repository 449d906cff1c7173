"""nfdm_jax: Neural Flow Diffusion Models in JAX.

The method's modules (``forward``, ``schedules``, ``volatility``, ``drifts``,
``decoders``, ``losses``, ``sampling``, ``likelihood``) are pure JAX and import no Flax;
networks (``nfdm_jax.nets``) and training (``nfdm_jax.train``) build on them.
"""
from nfdm_jax import decoders, drifts, forward, losses, schedules, volatility
from nfdm_jax.decoders import centred, dequantized, make_decoder
from nfdm_jax.drifts import generative_drift, preconditioned
from nfdm_jax.forward import (Marginal, bridge_forward, marginal_and_velocity, neural_forward,
                              straight_forward, vp_forward)
from nfdm_jax.losses import (BridgeTerms, NELBOTerms, OTTerms, bits_per_dim, nelbo,
                             nelbo_terms, nfbm_loss, nfdm_ot_terms, ode_acceleration,
                             stratified_times)

__version__ = "0.1.0"

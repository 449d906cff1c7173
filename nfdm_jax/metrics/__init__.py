"""Sample-quality metrics: FID (``fid``, with the Flax Inception in ``inception``) and
sample distances for low-dimensional data (``sample_distances``).

``inception`` is not imported here: it needs Flax and its weights are only needed for FID.
"""
from nfdm_jax.metrics import fid, sample_distances
from nfdm_jax.metrics.fid import FeatureStats, frechet_distance
from nfdm_jax.metrics.sample_distances import energy_distance, sliced_wasserstein

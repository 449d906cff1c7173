"""Input pipelines: random-access sources and deterministic, sharded batch iteration.

Every dataset is a random-access :class:`~nfdm_jax.data.sources.Source` of examples
(dicts of numpy arrays). :mod:`nfdm_jax.data.pipeline` turns sources into global
``jax.Array`` batches, each process reading only its own rows.
"""
from nfdm_jax.data.pipeline import BatchIterator, eval_batches, process_rows
from nfdm_jax.data.registry import DatasetSpec, channel_stats, make_datasets
from nfdm_jax.data.sources import ArraySource, DatasetNotFoundError, Source, TfdsSource

__all__ = ["ArraySource", "BatchIterator", "DatasetNotFoundError", "DatasetSpec", "Source",
           "channel_stats",
           "TfdsSource", "eval_batches", "make_datasets", "process_rows"]

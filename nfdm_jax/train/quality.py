"""Sample quality for ``--mode=eval``: a Fréchet distance at several NFE, with no download.

* digits: the Fréchet distance in the feature space of a small classifier trained on the
  training split (``nfdm_jax.metrics.classifier_features``; trained once, cached in
  ``workdir/eval/digits_classifier.npz``, its test accuracy reported), between
  ``config.sample.eval_num`` generated images and the test split; and the floor, the same
  distance between that many real training images and the test split.
* other images: FID against the eval split when ``config.sample.inception_weights`` names
  the Inception file; otherwise one line saying how to get it.

Standard errors are bootstrap standard deviations over 50 resamples of both feature sets.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np

from nfdm_jax import decoders
from nfdm_jax.metrics import classifier_features as cf
from nfdm_jax.train import generate
from nfdm_jax.train.experiment import Experiment
from nfdm_jax.train.progress import Progress, info


def _arrays(source: Any, key: str) -> np.ndarray:
    return source.arrays[key] if hasattr(source, "arrays") else np.stack(
        [source[i][key] for i in range(len(source))])


def samples_at(exp: Experiment, params: Any, key: jax.Array, nfe: int, num: int) -> np.ndarray:
    """``num`` generated images as uint8 pixels, with ``config.sample.method`` at ``nfe``."""
    s = exp.config.sample
    draw = jax.jit(lambda p, k: generate.generate(exp.model, p, k, num, s.method, nfe, rho=s.rho))
    return np.asarray(jax.device_get(decoders.to_pixels(draw(params, key))))


def _frechet_table(exp: Experiment, params: Any, key: jax.Array,
                   extract: Callable[[np.ndarray], np.ndarray], reference: np.ndarray,
                   name: str) -> dict[str, float]:
    s = exp.config.sample
    ref = extract(reference)
    out = {}
    progress = Progress(f"eval {name}", len(s.eval_nfe), unit="NFE settings", every_secs=0)
    for i, nfe in enumerate(s.eval_nfe):
        images = samples_at(exp, params, jax.random.fold_in(key, nfe), nfe, s.eval_num)
        value, se = cf.frechet_bootstrap(extract(images), ref)
        out[f"{name}_nfe{nfe}"], out[f"{name}_nfe{nfe}_stderr"] = value, se
        progress.update(i + 1)
    return out


def digits_frechet(exp: Experiment, params: Any, workdir: str, key: jax.Array
                   ) -> dict[str, float]:
    """``fd_nfe<N>`` ± stderr per NFE, ``fd_floor`` ± stderr, ``classifier_test_accuracy``."""
    train, test = exp.data.train["x"], exp.data.eval["x"]
    arrays = (_arrays(train, "x"), _arrays(train, "label"), _arrays(test, "x"),
              _arrays(test, "label"))
    classifier = cf.cached(os.path.join(workdir, "eval", "digits_classifier.npz"), *arrays,
                           seed=exp.config.seed)
    extract = lambda images: cf.features(classifier.params, images)  # noqa: E731
    out = {"classifier_test_accuracy": classifier.test_accuracy}
    rng = np.random.default_rng(exp.config.seed)
    real = arrays[0][rng.choice(len(arrays[0]), min(exp.config.sample.eval_num, len(arrays[0])),
                                replace=False)]
    out["fd_floor"], out["fd_floor_stderr"] = cf.frechet_bootstrap(extract(real),
                                                                   extract(arrays[2]))
    return out | _frechet_table(exp, params, key, extract, arrays[2], "fd")


def inception_fid(exp: Experiment, params: Any, key: jax.Array) -> dict[str, float]:
    """``fid_nfe<N>`` ± stderr against the eval split, or ``{}`` with one line saying why."""
    path = exp.config.sample.inception_weights
    if not path or not os.path.isfile(path):
        info("FID skipped: no Inception weights (config.sample.inception_weights=%r); see "
             "nfdm_jax/metrics/inception.py for how to make the file offline.", path)
        return {}
    from nfdm_jax.metrics import inception  # Flax; only needed here.

    apply = inception.feature_extractor(path, flag_name="config.sample.inception_weights")
    extract = lambda images: np.concatenate(  # noqa: E731
        [np.asarray(apply(images[i:i + 100])) for i in range(0, len(images), 100)])
    source = exp.data.eval["x"]
    n = min(len(source), exp.config.sample.eval_num)
    reference = np.stack([source[i]["x"] for i in range(n)])
    return _frechet_table(exp, params, key, extract, reference, "fid")


def sample_quality(exp: Experiment, params: Any, workdir: str, key: jax.Array
                   ) -> dict[str, float]:
    """The Fréchet metrics this experiment supports (empty for 2-D data and bridges); the
    samples at NFE n use ``fold_in(key, n)``."""
    if exp.model.bridge or len(exp.model.shape) != 3 or not exp.config.sample.eval_nfe:
        return {}
    if exp.config.data.name == "digits":
        return digits_frechet(exp, params, workdir, key)
    return inception_fid(exp, params, key)

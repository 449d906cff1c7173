"""U-Net training end to end: CIFAR-10 ``:tiny`` on ``tfds.testing.mock_data`` (train,
evaluate, checkpoint, resume) and the digits config for a few steps."""
import shutil

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import cifar10, digits
from nfdm_jax.train import Checkpointer, loop


def small(config, **train):
    config.unlock()
    for k, v in train.items():
        config.train[k] = v
    config.lock()
    return config


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cifar")
    config = small(cifar10.get_config("tiny"), num_steps=4, checkpoint_every=2, log_every=2,
                   eval_every=4)
    with tfds.testing.mock_data(num_examples=20):
        state = loop.train(config, str(workdir), jax.devices()[:1])
    return config, workdir, state


@pytest.mark.slow  # compiles the U-Net NFDM step and its evaluation: ~1-2 min on 2 cores
def test_cifar_mock_train_eval_checkpoint(cifar_run):
    config, workdir, state = cifar_run
    assert int(state.step) == 4
    ckpt = Checkpointer(str(workdir), 3)
    assert ckpt.manager.all_steps() == [2, 4]
    ckpt.close()
    # Evaluation ran inside train() at step 4 (eval_every=4) over the padded mock test split.
    assert list((workdir / "tensorboard").iterdir())  # event files from process 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.ema_params)))


@pytest.mark.slow  # recompiles the U-Net step
def test_cifar_mock_resume_equals_uninterrupted(cifar_run, tmp_path):
    config, workdir, state = cifar_run
    shutil.copytree(workdir, tmp_path / "w")
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "4")
    with tfds.testing.mock_data(num_examples=20):
        resumed = loop.train(config, str(tmp_path / "w"), jax.devices()[:1])
    chex.assert_trees_all_close(jax.device_get(resumed.params), jax.device_get(state.params),
                                rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a second U-Net compilation: ~1-2 min on 2 shared cores
def test_digits_trains_and_eval_reports_bpd_and_frechet(tmp_path):
    config = small(digits.get_config("tiny"), num_steps=4, eval_every=0, checkpoint_every=4)
    config.unlock()
    config.sample.eval_nfe, config.sample.eval_num = (2,), 64
    config.lock()
    state = loop.train(config, str(tmp_path), jax.devices()[:1])
    assert int(state.step) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))
    metrics = loop.run_eval(config, str(tmp_path))
    assert metrics["bpd_stderr"] > 0 and metrics["classifier_test_accuracy"] > 0.85
    # Four training steps: samples are far from digits, farther than real training digits.
    assert metrics["fd_nfe2"] > metrics["fd_floor"] + 3 * metrics["fd_floor_stderr"]
    assert (tmp_path / "eval" / "digits_classifier.npz").exists()


def test_fid_is_skipped_with_one_line_without_weights(caplog):
    from types import SimpleNamespace

    from nfdm_jax.train import quality

    exp = SimpleNamespace(config=SimpleNamespace(sample=SimpleNamespace(inception_weights="")))
    with caplog.at_level("INFO"):
        assert quality.inception_fid(exp, None, jax.random.key(0)) == {}
    assert "FID skipped" in caplog.text and "inception.py" in caplog.text

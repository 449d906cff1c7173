"""SIGTERM in the middle of ``experiments.run`` training: a clean save and exit 0, then a
resume whose final parameters equal those of an uninterrupted run. Single-device runs
(the subprocesses get no fake devices), since this is about the loop, not sharding.
A subprocess test: marked slow (``pytest -m slow``)."""
import os
import signal
import subprocess
import sys

import chex
import jax
import pytest

from nfdm_jax.train import Checkpointer, experiment, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 300
FLAGS = ["--config=experiments/toy2d.py:tiny", f"--config.train.num_steps={STEPS}",
         "--config.train.log_every=20", "--config.train.checkpoint_every=100000",
         "--config.train.eval_every=0"]


def launch(workdir):
    return subprocess.Popen([sys.executable, "-m", "experiments.run", f"--workdir={workdir}",
                             *FLAGS], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""),
                            stderr=subprocess.PIPE, text=True)


def restore_params(workdir, step, config):
    exp = experiment.setup(config, jax.devices()[:1])
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    ckpt = Checkpointer(workdir, 3)
    state, _, _ = ckpt.restore(step, target)
    ckpt.close()
    return jax.device_get(state.params)


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path, toy_config, sharding_tolerance):
    rtol, atol = sharding_tolerance
    workdir = str(tmp_path / "run")
    proc = launch(workdir)
    for line in proc.stderr:  # wait until training is under way, then pre-empt
        if "[train] step" in line:
            proc.send_signal(signal.SIGTERM)
            break
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err[-3000:]
    assert "SIGTERM: saving step" in err
    assert os.path.exists(os.path.join(workdir, "config.json"))
    stopped = Checkpointer(workdir, 3).latest_step()
    assert stopped is not None and 0 < stopped < STEPS, stopped

    resumed = launch(workdir)
    err = resumed.stderr.read()
    assert resumed.wait(timeout=300) == 0, err[-3000:]
    assert f"Resumed from {workdir}/checkpoints/{stopped}" in err

    config = toy_config(**{"train.num_steps": STEPS, "train.eval_every": 0,
                           "train.checkpoint_every": 100000, "train.log_every": 20})
    straight = loop.train(config, str(tmp_path / "straight"), jax.devices()[:1])
    chex.assert_trees_all_close(restore_params(workdir, STEPS, config),
                                jax.device_get(straight.params), rtol=rtol, atol=atol)

"""Configs load (with variants), are locked, and bad ones stop ``experiments.run`` with a
message naming the problem before anything is compiled."""
import importlib
import os
import subprocess
import sys

import pytest

CONFIGS = ["cifar10", "imagenet32", "imagenet64", "afhq64_bridge", "toy2d", "toy2d_ot",
           "toy2d_bridge", "digits"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", ["", "tiny"])
def test_config_loads_locked_and_valid(name, arg):
    import jax

    from nfdm_jax.train import validation

    module = importlib.import_module(f"experiments.{name}")
    assert "Launch" in module.__doc__ and "Expected" in module.__doc__
    c = module.get_config(arg)
    validation.check_config(c, jax.devices()[:1])
    assert c.is_locked
    with pytest.raises(AttributeError):
        c.train.bogus = 1


def test_spec_hyperparameters():
    from experiments import cifar10, imagenet32, imagenet64

    table = {cifar10: (256, 5e-4, "polynomial", 45_000, 391_000),
             imagenet32: (1024, 1e-4, "polynomial", 20_000, 250_000),
             imagenet64: (2048, 1e-4, "constant", 0, 157_000)}
    for module, expected in table.items():
        c = module.get_config()
        assert (c.train.batch_size, c.optim.lr, c.optim.schedule, c.optim.warmup_steps,
                c.train.num_steps) == expected
        assert (c.optim.clip_norm, c.optim.ema_decay) == (1.0, 0.9999)


def test_variants_compose_and_unknown_variant_fails():
    from experiments import cifar10

    c = cifar10.get_config("tiny,vdm")
    assert (c.net.preset, c.model.name, c.model.volatility) == ("tiny", "vdm", "vp_matching")
    with pytest.raises(ValueError, match="unknown config variant 'nope'"):
        cifar10.get_config("nope")


def run(args, tmp_path):
    env = dict(os.environ, JAX_LOG_COMPILES="1", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "experiments.run", f"--workdir={tmp_path}",
                             *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # subprocesses
def test_bad_configs_fail_before_compiling(tmp_path):
    cases = {  # flags -> text the error must contain
        ("--config=experiments/toy2d.py:tiny", "--config.train.bogus=3"): "bogus",
        ("--config=experiments/toy2d.py:tiny", "--config.train.batch_size=12"):
            "batch_size=12 is invalid: a multiple of the 8 data-parallel devices",
        ("--config=experiments/cifar10.py:tiny", f"--config.data.data_dir={tmp_path}/none"):
            "'cifar10'",
    }
    procs = {args: run(args, tmp_path / str(i)) for i, args in enumerate(cases)}
    for args, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, (args, err[-2000:])
        assert cases[args] in err, (args, err[-2000:])
        assert "Compiling" not in err, (args, err[-2000:])
    assert "tfds build cifar10" in err

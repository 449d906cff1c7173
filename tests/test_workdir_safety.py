"""The workdir under concurrent use (issue #23): readers (``--mode=eval`` / ``sample``) never
harm a training run; one training per workdir (a lock, recovered after ``kill -9``); every
checkpoint records the config that made it; saves on a model-sharded mesh; SIGTERM at
start-up or during teardown exits 0. Subprocess tests are marked slow."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import run
from nfdm_jax.train import (CheckpointError, checkpointing, experiment, loop, validation,
                            workdir_lock)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIX = {"train.num_steps": 6, "train.checkpoint_every": 3, "train.eval_every": 0,
       "train.log_every": 3}


def snapshot(root: str) -> dict[str, bytes]:
    """``{relative path: contents}`` of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, toy_config):
    """A workdir trained through ``experiments.run`` on 1 device: checkpoints 3 and 6."""
    workdir = str(tmp_path_factory.mktemp("six") / "w")
    assert run.execute(toy_config(**SIX), workdir, "train", jax.devices()[:1]) == 0
    return workdir


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ provenance

@pytest.mark.parametrize("field,value", [("model.delta", 0.02), ("data.target", "two_moons")])
def test_checkpoint_record_refuses_another_config_without_config_json(
        field, value, six_steps, tmp_path, capsys, toy_config):
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    os.remove(os.path.join(workdir, "config.json"))
    before = snapshot(workdir)
    capsys.readouterr()
    config = toy_config(**{**SIX, "train.num_steps": 9, field: value})
    assert run.execute(config, workdir, "train", jax.devices()[:1]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{field} (stored" in line and "checkpoint 6" in line, line
    assert snapshot(workdir) == before


def test_missing_config_json_is_rebuilt_on_resume(six_steps, tmp_path, toy_config):
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    os.remove(os.path.join(workdir, "config.json"))
    assert run.execute(toy_config(**SIX), workdir, "train", jax.devices()[:1]) == 0
    assert (open(os.path.join(workdir, "config.json")).read()
            == open(os.path.join(six_steps, "config.json")).read())


@pytest.mark.parametrize("text", ["[]", "null", "3"])
def test_config_json_that_is_not_an_object_is_one_line(text, six_steps, tmp_path, capsys,
                                                       toy_config):
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    open(os.path.join(workdir, "config.json"), "w").write(text)
    before = snapshot(workdir)
    capsys.readouterr()
    assert run.execute(toy_config(**SIX), workdir, "train", jax.devices()[:1]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "config.json" in line and "delete it" in line, line
    assert snapshot(workdir) == before


def test_restore_compares_the_restored_checkpoints_record(toy_config):
    """An older checkpoint restored after newer ones were rejected is checked too."""
    record = validation.provenance(toy_config())
    loop.check_restored(toy_config(), 3, {"step": 3, "seed": 0}, record)
    loop.check_restored(toy_config(), 3, {"step": 3, "seed": 0}, None)  # before records
    with pytest.raises(CheckpointError, match=r"checkpoint 3 .*model\.delta \(stored 0\.01"):
        loop.check_restored(toy_config(**{"model.delta": 0.02}), 3, {"step": 3}, record)


def test_tampered_record_is_corrupt(six_steps, tmp_path, toy_config):
    """The record is checksummed by the fingerprint like the other items."""
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    path = os.path.join(workdir, "checkpoints", "6", "config", "metadata")
    record = json.load(open(path))
    record["net"]["depth"] += 0  # same content, other bytes: still verifies
    json.dump(record, open(path, "w"), indent=1)
    record["model"]["delta"] = 0.02
    exp = experiment.setup(toy_config(**SIX), jax.devices()[:1])
    ckpt = checkpointing.Checkpointer(workdir, 3)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          exp.abstract_state, exp.state_shardings)
    ckpt.restore(6, target)
    json.dump(record, open(path, "w"))
    with pytest.raises(checkpointing.CorruptCheckpoint, match="config record"):
        ckpt.restore(6, target)
    ckpt.close()


# ------------------------------------------------------------------------------ one writer

HOLDER = """
import sys, time
from nfdm_jax.train import workdir_lock
with workdir_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_second_training_is_refused_and_a_stale_lock_recovered(tmp_path, capsys, toy_config):
    workdir = str(tmp_path / "w")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=""),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        config = toy_config(**SIX)
        assert run.execute(config, workdir, "train", jax.devices()[:1]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {holder.pid} on host" in line and "train.lock" in line, line
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    finally:
        holder.kill()  # SIGKILL: the lock file stays, naming a dead process
        holder.wait()
    assert f"pid {holder.pid}" in open(os.path.join(workdir, workdir_lock.LOCK_FILE)).read()
    assert run.execute(config, workdir, "train", jax.devices()[:1]) == 0
    with workdir_lock.hold(workdir):  # released on return
        pass


# ------------------------------------------------------------------------------ subprocesses

def launch(workdir: str, *flags: str, mode: str = "train", devices: int = 1,
           log=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, "-m", "experiments.run", f"--workdir={workdir}",
                             f"--mode={mode}", "--config=experiments/toy2d.py:tiny", *flags],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    err = proc.communicate(timeout=timeout)[1] or ""
    assert proc.returncode == 0, err[-3000:]
    return err


def final_state(workdir: str, step: int) -> tuple[dict, list[np.ndarray]]:
    """The fingerprint and every array of checkpoint ``step``."""
    import orbax.checkpoint as ocp

    folder = os.path.join(workdir, "checkpoints", str(step))
    with ocp.StandardCheckpointer() as c:
        arrays = [np.asarray(x) for x in jax.tree.leaves(c.restore(os.path.join(folder, "state")))]
    return json.load(open(os.path.join(folder, "fingerprint", "metadata"))), arrays


READ_STEPS = 90  # 30 saves: ~1 min on 2 busy cores (a save waits for the one before)
READ_FLAGS = [f"--config.train.num_steps={READ_STEPS}", "--config.train.checkpoint_every=3",
              "--config.train.max_to_keep=1", "--config.train.log_every=3",
              "--config.train.eval_every=0", "--config.sample.num=8"]


@pytest.mark.slow
def test_readers_in_parallel_never_harm_training(tmp_path):
    reference, busy = str(tmp_path / "reference"), str(tmp_path / "busy")
    finish(launch(reference, *READ_FLAGS))
    trainer = launch(busy, *READ_FLAGS, log=open(tmp_path / "train.log", "w"))
    while not validation.checkpoint_steps(busy):  # readers need a first checkpoint
        assert trainer.poll() is None, open(tmp_path / "train.log").read()[-3000:]
        time.sleep(0.05)
    reads = []
    while trainer.poll() is None:
        readers = [launch(busy, *READ_FLAGS, mode=mode) for mode in ("eval", "sample")]
        reads += [finish(r) for r in readers]
    assert trainer.wait() == 0, open(tmp_path / "train.log").read()[-3000:]
    assert len(reads) >= 2, len(reads)
    assert not os.path.exists(os.path.join(busy, checkpointing.REJECTED_DIR))
    assert not [n for n in os.listdir(busy) if n.startswith(".reading-")]
    assert not any("skipped" in err or "Traceback" in err for err in reads)
    (print_a, arrays_a), (print_b, arrays_b) = final_state(reference, READ_STEPS), \
        final_state(busy, READ_STEPS)
    assert print_a == print_b
    for a, b in zip(arrays_a, arrays_b):
        np.testing.assert_array_equal(a, b)


def test_reader_relists_when_a_step_vanishes(six_steps, tmp_path, monkeypatch, toy_config):
    """A step deleted while a reader copies it (retention) sends the reader back to the
    listing; nothing is moved aside and the reader reads the step that remains."""
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    linked = checkpointing.private_copy.linked
    deleted = []

    def delete_first(directory, step, root):
        if not deleted:  # the newest step goes, as retention would delete it
            shutil.rmtree(os.path.join(directory, str(step)))
            deleted.append(step)
        return linked(directory, step, root)

    monkeypatch.setattr(checkpointing.private_copy, "linked", delete_first)
    before = snapshot(os.path.join(workdir, "checkpoints", "3"))
    metrics = loop.run_eval(toy_config(**SIX), workdir)
    assert deleted == [6] and ("bpd" in metrics or "loss" in metrics)
    assert os.path.exists(os.path.join(workdir, "eval", "3.json"))
    assert not os.path.exists(os.path.join(workdir, checkpointing.REJECTED_DIR))
    assert snapshot(os.path.join(workdir, "checkpoints", "3")) == before


def test_reader_skips_a_corrupt_checkpoint_and_leaves_it(six_steps, tmp_path, toy_config,
                                                         caplog):
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6", "fingerprint"))
    open(os.path.join(workdir, "checkpoints", "7"), "w").write("not a folder")
    before = snapshot(workdir)
    path = loop.run_sample(toy_config(**{**SIX, "sample.num": 8}), workdir)
    assert path.endswith("samples/3.npz")
    after = snapshot(workdir)
    assert {k: v for k, v in after.items() if not k.startswith("samples/")} == before
    assert any("step 6 skipped" in r.getMessage() and "left in place" in r.getMessage()
               for r in caplog.records)


def test_training_moves_a_plain_file_step_aside(six_steps, tmp_path, toy_config, caplog):
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    open(os.path.join(workdir, "checkpoints", "9"), "w").write("not a folder")
    assert run.execute(toy_config(**{**SIX, "train.num_steps": 9}), workdir, "train",
                       jax.devices()[:1]) == 0
    assert open(os.path.join(workdir, checkpointing.REJECTED_DIR, "9")).read() == "not a folder"
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "9"))
    assert any("step 9 skipped: not a folder" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_rejected_checkpoint_is_one_line_on_stderr(six_steps, tmp_path):
    """Nothing but the warning: no asyncio or TensorStore tracebacks (those need --debug)."""
    workdir = str(tmp_path / "w")
    shutil.copytree(six_steps, workdir)
    state = os.path.join(workdir, "checkpoints", "6", "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f)]
    largest = max(files, key=os.path.getsize)
    data = open(largest, "rb").read()
    open(largest, "wb").write(data[:len(data) // 2])
    err = finish(launch(workdir, "--config.train.num_steps=9", "--config.train.checkpoint_every=3",
                        "--config.train.log_every=3", "--config.train.eval_every=0"))
    loud = [line for line in err.splitlines() if line.strip() and not line.startswith("I")]
    assert len(loud) == 1 and "checkpoint step 6 skipped" in loud[0], err[-5000:]


# ------------------------------------------------------------------------------ sharded saves

@pytest.mark.slow
def test_saves_on_a_model_sharded_mesh_and_resumes_across_meshes(tmp_path):
    """8 CPU devices, mesh.model=2, every leaf that divides sharded: 20 saves with no
    rendezvous abort; resumes 1 device -> mesh.model=2 -> 1 device verify and continue."""
    workdir = str(tmp_path / "w")
    common = ["--config.train.checkpoint_every=1", "--config.train.log_every=4",
              "--config.train.eval_every=0", "--config.mesh.shard_min_size=0"]
    finish(launch(workdir, "--config.train.num_steps=4", *common))
    err = finish(launch(workdir, "--config.train.num_steps=24", "--config.mesh.model=2",
                        *common, devices=8))
    assert f"Resumed from {workdir}/checkpoints/4" in err
    err = finish(launch(workdir, "--config.train.num_steps=28", *common))
    assert f"Resumed from {workdir}/checkpoints/24" in err
    assert validation.checkpoint_steps(workdir)[-1] == 28
    assert not os.path.exists(os.path.join(workdir, checkpointing.REJECTED_DIR))


# ------------------------------------------------------------------------------ SIGTERM

@pytest.mark.slow
def test_sigterm_at_start_up_and_after_the_final_save_exits_0(tmp_path):
    flags = ["--config.train.num_steps=40", "--config.train.checkpoint_every=10",
             "--config.train.log_every=10", "--config.train.eval_every=0"]
    workdir = str(tmp_path / "w")
    for delay in (0.5, 2.0, 4.0):  # imports, validation, set-up and restore
        proc = launch(workdir, *flags)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        finish(proc, timeout=120)
    # After the final save: during the teardown, and during the interpreter's exit.
    for line_marker in ("[train] 40/40", "[done] train"):
        shutil.rmtree(workdir, ignore_errors=True)
        proc = launch(workdir, *flags)
        for line in proc.stderr:
            if line_marker in line:
                proc.send_signal(signal.SIGTERM)
                break
        finish(proc, timeout=120)
        assert validation.checkpoint_steps(workdir)[-1] == 40

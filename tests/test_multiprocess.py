"""Two processes × 2 fake CPU devices joined by ``jax.distributed`` (gloo collectives):
train, save, resume; both processes hold the same parameters; their data rows are disjoint;
a SIGTERM to one process makes both save the same step (JAX's pre-emption sync).
Subprocess tests: marked slow (``pytest -m slow``)."""
import collections.abc
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
address, pid, workdir, num_steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
jax.distributed.initialize(address, num_processes=2, process_id=pid)
from experiments import toy2d
from nfdm_jax.data import BatchIterator
from nfdm_jax.train import Checkpointer, experiment, loop

config = toy2d.get_config("tiny")
config.unlock()
config.train.num_steps, config.train.eval_every = num_steps, 3
config.lock()
ckpt = Checkpointer(workdir, 3)
resumed_from = ckpt.latest_step()
ckpt.close()
state = loop.train(config, workdir)
exp = experiment.setup(config)
it = BatchIterator(exp.data.train, config.train.batch_size, exp.mesh, config.seed)
rows = [it.local_indices(0, s).tolist() for s in range(3)]
it.close()
# Parameters are replicated: every process holds a full copy on its first local device.
leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
print("RESULT", json.dumps({"resumed_from": resumed_from,
                            "step": int(state.step.addressable_data(0)), "rows": rows,
                            "digest": float(sum(np.abs(l).sum() for l in leaves)),
                            "devices": [jax.local_device_count(), jax.device_count()]}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_pair(workdir, num_steps):
    address = f"localhost:{free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(pid), str(workdir),
                               str(num_steps)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for pid in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT", 1)[1]))
    return results


@pytest.mark.slow
def test_two_processes_train_save_resume_agree(tmp_path):
    first = run_pair(tmp_path, 3)
    assert [r["devices"] for r in first] == [[2, 4], [2, 4]]
    assert [(r["resumed_from"], r["step"]) for r in first] == [(None, 3), (None, 3)]
    assert first[0]["digest"] == first[1]["digest"]
    for s in range(3):  # each process reads its own half of every global batch
        a, b = first[0]["rows"][s], first[1]["rows"][s]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert os.path.isdir(tmp_path / "checkpoints" / "3")

    second = run_pair(tmp_path, 6)
    assert [r["resumed_from"] for r in second] == [3, 3]
    assert [r["step"] for r in second] == [6, 6]
    assert second[0]["digest"] == second[1]["digest"]
    assert not np.isclose(second[0]["digest"], first[0]["digest"])


@pytest.mark.slow
def test_sigterm_on_one_host_saves_the_same_step_on_both(tmp_path):
    """JAX's pre-emption service: SIGTERM to process 1 only; both stop at one agreed step."""
    address = f"localhost:{free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONFAULTHANDLER="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    logs = [str(tmp_path / f"{pid}.log") for pid in range(2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "--config=experiments/toy2d.py:tiny",
         "--config.train.num_steps=100000", "--config.train.log_every=50",
         "--config.train.checkpoint_every=100000", "--config.train.eval_every=0",
         f"--workdir={tmp_path / 'w'}", f"--coordinator_address={address}",
         "--num_processes=2", f"--process_id={pid}", "--cpu_collectives=gloo"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(logs[pid], "w"))
        for pid in range(2)]
    deadline = time.time() + 240
    while "[train] step" not in open(logs[0]).read():
        assert time.time() < deadline and procs[0].poll() is None, open(logs[0]).read()[-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    try:
        codes = [proc.wait(timeout=240) for proc in procs]
    except subprocess.TimeoutExpired:  # A hang: every thread's Python stack goes to the log.
        codes = None
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=30)
    tails = "\n".join(f"--- process {pid}:\n" + open(log).read()[-3000:]
                      for pid, log in enumerate(logs))
    assert codes == [0, 0], f"exit codes {codes}\n{tails}"
    saved = [re.findall(r"SIGTERM: saving step (\d+)", open(log).read()) for log in logs]
    assert len(saved[0]) == 1 and saved[0] == saved[1], saved
    assert os.listdir(tmp_path / "w" / "checkpoints") == saved[0]


# ---------------------------------------------------------------- the ImageNet-64 code path

IMAGENET_WORKER = r"""
import json, sys
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
address, pid, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
workdir, out = sys.argv[4], sys.argv[5]
jax.distributed.initialize(address, num_processes=processes, process_id=pid)
from nfdm_jax.data import BatchIterator
from nfdm_jax.train import Checkpointer, experiment, loop
sys.path.insert(0, "tests")
from test_multiprocess import imagenet_config, mock_imagenet64

config = imagenet_config()
with mock_imagenet64():
    exp = experiment.setup(config)
    it = BatchIterator(exp.data.train, config.train.batch_size, exp.mesh, config.seed)
    print("ROWS", json.dumps([it.local_indices(0, s).tolist() for s in range(3)]), flush=True)
    it.close()
    ckpt = Checkpointer(workdir, 3)
    resumed_from = ckpt.latest_step()
    ckpt.close()
    state = loop.train(config, workdir)
if pid == 0:  # parameters are replicated (mesh.model = 1): every process holds them all
    np.savez(out, *[np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)])
print("RESULT", json.dumps({"resumed_from": resumed_from,
                            "step": int(state.step.addressable_data(0)),
                            "devices": [jax.local_device_count(), jax.device_count()]}), flush=True)
"""

IMAGENET_STEPS = 8


class MockImages(collections.abc.Sequence):
    """A 64×64 ImageNet split: example i is a fixed random image, the same in every process."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        rng = np.random.default_rng(int(index))
        return {"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}


def mock_imagenet64(size=64):
    """``tfds.data_source("downsampled_imagenet/64x64", ...)`` reads :class:`MockImages`
    (tfds' own mock draws images of random sizes)."""
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                  as_data_source_fn=lambda builder, split, **kw: MockImages(size))


def imagenet_config():
    """``experiments/imagenet64.py:tiny``: the tiny U-Net on 64×64 mock ImageNet, batch 8,
    a checkpoint every 2 steps, no evaluation."""
    from experiments import imagenet64

    config = imagenet64.get_config("tiny")
    config.unlock()
    config.train.num_steps, config.train.checkpoint_every = IMAGENET_STEPS, 2
    config.train.eval_every, config.train.log_every = 0, 2
    config.lock()
    return config


@contextlib.contextmanager
def job(processes, workdir, out, logs):
    """``processes`` worker processes sharing 8 fake CPU devices, joined by gloo; any still
    running at the end (a failed test) are killed."""
    address = f"localhost:{free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    procs = [subprocess.Popen([sys.executable, "-c", IMAGENET_WORKER, address, str(pid),
                               str(processes), str(workdir), str(out)], cwd=REPO, env=env,
                              stdout=open(f"{logs}.{processes}.{pid}.out", "w"),
                              stderr=open(f"{logs}.{processes}.{pid}.err", "w"))
             for pid in range(processes)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def committed_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow  # three tiny U-Net compiles (4, 2 and 1 processes): ~12 min on 2 cores
def test_imagenet64_four_hosts_killed_resume_on_two_equals_uninterrupted(tmp_path,
                                                                         sharding_tolerance):
    """4 processes × 2 devices train the ImageNet-64 path; one is killed with SIGKILL after
    the first checkpoint (the others are then stopped, as a scheduler would); all restart
    as 2 processes × 4 devices, resume from the newest checkpoint and end where an
    uninterrupted 8-device run ends. Each process reads only its own rows of each batch."""
    import jax
    from nfdm_jax.train import experiment, loop

    rtol, atol = sharding_tolerance
    workdir, logs = tmp_path / "w", str(tmp_path / "log")
    with job(4, workdir, tmp_path / "p4.npz", logs) as procs:
        deadline = time.time() + 900
        while not committed_steps(workdir):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                open(f"{logs}.4.0.err").read()[-3000:]
            time.sleep(0.5)
        procs[1].kill()  # SIGKILL: no handler, no final checkpoint
        for p in procs:  # the survivors wait on the dead peer's collectives, or exit
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    killed_at = committed_steps(workdir)
    assert killed_at and killed_at[-1] < IMAGENET_STEPS, killed_at
    rows = [json.loads(open(f"{logs}.4.{pid}.out").read().split("ROWS", 1)[1].split("\n")[0])
            for pid in range(4)]
    for s in range(3):  # each host reads its own quarter of every global batch
        assert sorted(len(r[s]) for r in rows) == [2, 2, 2, 2]
        assert len(set().union(*(r[s] for r in rows))) == 8

    with job(2, workdir, tmp_path / "p2.npz", logs) as procs:
        results = []
        for pid, p in enumerate(procs):
            assert p.wait(timeout=900) == 0, open(f"{logs}.2.{pid}.err").read()[-3000:]
            results.append(json.loads(open(f"{logs}.2.{pid}.out").read().split("RESULT", 1)[1]))
    assert [r["devices"] for r in results] == [[4, 8], [4, 8]]
    assert [r["resumed_from"] for r in results] == [killed_at[-1]] * 2
    assert [r["step"] for r in results] == [IMAGENET_STEPS] * 2

    config = imagenet_config()
    with mock_imagenet64():
        reference = loop.train(config, str(tmp_path / "ref"), jax.devices())
        exp = experiment.setup(config, jax.devices()[:1])
    expected = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(reference.params))]
    resumed = list(np.load(tmp_path / "p2.npz").values())
    for a, b in zip(resumed, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    # The loss both parameter sets give on one fixed batch, t and noise.
    treedef = jax.tree.structure(reference.params)
    batch = {"x": np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)}
    key = jax.random.PRNGKey(0)
    losses = [float(exp.model.loss(jax.tree.unflatten(treedef, p), batch, key, False, key)[0])
              for p in (resumed, expected)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=rtol)

"""Two processes × 2 fake CPU devices joined by ``jax.distributed`` (gloo collectives):
train, save, resume; both processes hold the same parameters; their data rows are disjoint;
a SIGTERM to one process makes both save the same step (JAX's pre-emption sync).
Subprocess tests: marked slow (``pytest -m slow``)."""
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

"""Test-set BPD over a padded split, the JSON record, and the PNG plots."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from matplotlib import image as mpl_image

from nfdm_jax import evaluation, plotting

N, BATCH = 103, 16  # 7 batches, the last with 7 real rows and 9 padded ones


@pytest.fixture(scope="module")
def split():
    """Positive data [N, 2, 2]: per-example loss sum(log x) is −inf on zero padding."""
    return np.random.default_rng(0).uniform(0.5, 2.0, (N, 2, 2)).astype(np.float32)


def log_loss(params, x, key):
    """A known per-example "NELBO": params · Σ log x (independent of the key)."""
    del key
    return params * jnp.sum(jnp.log(jnp.reshape(x, (x.shape[0], -1))), axis=-1)


def uniform_loss(params, x, key):
    """Pure Monte Carlo noise U[0, 1) per example: exposes how keys are used."""
    del params
    return jax.random.uniform(key, (x.shape[0],))


def test_pad_batches_cover_the_split_in_order(split):
    batches = list(evaluation.pad_batches(split, BATCH))
    assert len(batches) == math.ceil(N / BATCH)
    assert all(b["x"].shape == (BATCH, 2, 2) and b["mask"].shape == (BATCH,) for b in batches)
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == N and np.all(masks[:N] == 1) and np.all(masks[N:] == 0)
    real = np.concatenate([b["x"] for b in batches])[:N]
    np.testing.assert_array_equal(real, split)
    np.testing.assert_array_equal(batches[-1]["x"][N % BATCH:], 0)


@pytest.mark.parametrize("convention, offset_bits", [("continuous", 0.0), ("dequantized", 7.0)])
def test_bpd_counts_every_example_once(split, convention, offset_bits):
    """Mean and standard error equal the exact ones over the split; NaN/−inf padding is ignored."""
    result = evaluation.evaluate_bpd(log_loss, 2.0, evaluation.pad_batches(split, BATCH),
                                     jax.random.key(0), convention=convention, num_t_samples=3)
    per_example = 2.0 * np.log(split.astype(np.float64)).reshape(N, -1).sum(-1) / (4 * math.log(2))
    per_example += offset_bits  # log 128 nats per dimension = 7 bits
    assert result.count == N and result.dim == 4 and result.num_t_samples == 3
    assert result.bpd == pytest.approx(per_example.mean(), rel=1e-5)
    assert result.stderr == pytest.approx(per_example.std(ddof=1) / math.sqrt(N), rel=1e-4)


def test_t_samples_and_batches_draw_independent_keys():
    """K averaged U[0,1) draws have standard error √(1/(12 K N)); equal keys would not shrink
    it. With one example per batch, equal batch keys would give identical values (SE 0)."""
    data = np.zeros((1000, 1), np.float32)
    se = {}
    for k in (1, 16):
        result = evaluation.evaluate_bpd(uniform_loss, None, evaluation.pad_batches(data, 250),
                                         jax.random.key(1), convention="continuous",
                                         num_t_samples=k)
        se[k] = result.stderr * math.log(2)  # back to nats
        assert result.bpd * math.log(2) == pytest.approx(0.5, abs=5 * se[k])
    assert se[1] / se[16] == pytest.approx(4.0, rel=0.15)
    assert se[1] == pytest.approx(math.sqrt(1 / 12 / 1000), rel=0.1)
    single = evaluation.evaluate_bpd(uniform_loss, None, evaluation.pad_batches(data[:8], 1),
                                     jax.random.key(1), convention="continuous")
    assert single.count == 8 and single.stderr > 0.01


def test_bpd_with_sharded_batches_matches_host_batches(split):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    sharded = ({k: jax.device_put(v, sharding) for k, v in b.items()}
               for b in evaluation.pad_batches(split, BATCH))
    on_mesh = evaluation.evaluate_bpd(log_loss, 2.0, sharded, jax.random.key(0),
                                      convention="continuous")
    on_host = evaluation.evaluate_bpd(log_loss, 2.0, evaluation.pad_batches(split, BATCH),
                                      jax.random.key(0), convention="continuous")
    assert on_mesh.count == on_host.count == N
    assert on_mesh.bpd == pytest.approx(on_host.bpd, rel=1e-6)


def test_bad_arguments_are_rejected(split):
    with pytest.raises(ValueError, match="convention"):
        evaluation.evaluate_bpd(log_loss, 1.0, evaluation.pad_batches(split, BATCH),
                                jax.random.key(0), convention="bits")
    with pytest.raises(ValueError, match="no batches"):
        evaluation.evaluate_bpd(log_loss, 1.0, iter(()), jax.random.key(0),
                                convention="continuous")


def test_json_record(tmp_path):
    result = evaluation.BPDResult(bpd=2.5, stderr=0.01, count=10_000, num_t_samples=128,
                                  convention="discrete", dim=3072)
    path = tmp_path / "eval" / "bpd_test.json"
    evaluation.write_bpd_json(str(path), result, checkpoint_step=391_000, split="test")
    record = json.loads(path.read_text())
    assert record == {"convention": "discrete", "num_t_samples": 128, "split": "test",
                      "split_size": 10_000, "dim": 3072, "checkpoint_step": 391_000,
                      "bpd": 2.5, "stderr": 0.01}


def test_image_grid_layout_and_png(tmp_path):
    images = np.linspace(-1.0, 1.0, 5).reshape(5, 1, 1, 1) * np.ones((5, 2, 2, 3))
    grid = plotting.image_grid(images, ncols=3, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 64 and grid[4, 4, 0] == 255  # rows fill first
    assert np.all(grid[4:6, 7:9] == 0)  # the empty sixth cell
    path = tmp_path / "samples.png"
    plotting.save_image_grid(images, str(path), ncols=3)
    assert mpl_image.imread(str(path)).shape[:2] == grid.shape[:2]
    gray = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
    plotting.save_image_grid(gray, str(tmp_path / "gray.png"))
    assert mpl_image.imread(str(tmp_path / "gray.png")).shape[:2] == (19, 19)


def test_scatter_and_trajectory_pngs(tmp_path):
    rng = np.random.default_rng(1)
    plotting.save_scatter(rng.normal(size=(200, 2)), str(tmp_path / "a" / "scatter.png"),
                          reference=rng.normal(size=(100, 2)), title="samples", lim=4.0)
    zs = np.cumsum(rng.normal(size=(11, 30, 2)) * 0.1, axis=0)
    plotting.save_trajectories(zs, str(tmp_path / "traj.png"), ts=np.linspace(1, 0, 11),
                               obstacle=((0.0, 0.0), 0.5), title="paths")
    for name in ("a/scatter.png", "traj.png"):
        assert mpl_image.imread(str(tmp_path / name)).shape == (500, 500, 4)

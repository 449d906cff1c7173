"""Input pipeline: densities, per-process rows, deterministic/resumable batches, padded
evaluation, TFDS through ``tfds.testing.mock_data`` (no TensorFlow), missing datasets."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nfdm_jax.data import (ArraySource, BatchIterator, DatasetNotFoundError, TfdsSource,
                           eval_batches, process_rows, sources, toy2d)


def mesh_of(n: int, model: int = 1) -> Mesh:
    return Mesh(np.array(jax.devices()[:n]).reshape(n // model, model), ("data", "model"))


def test_eight_gaussians_centres_and_std():
    x = toy2d.eight_gaussians(np.random.default_rng(0), 200_000) * np.sqrt(2.0)
    angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) * (np.pi / 4)
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
    resid = x - centres
    np.testing.assert_allclose(resid.std(0), 0.5, rtol=0.02)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1).mean(), 4.0, rtol=0.02)


@pytest.mark.parametrize("name", sorted(toy2d.DENSITIES))
def test_toy_sources_are_seeded(name):
    a, b = toy2d.toy_source(name, 3, 100), toy2d.toy_source(name, 3, 100)
    np.testing.assert_array_equal(a[7]["x"], b[7]["x"])
    assert a[0]["x"].shape == (2,) and a[0]["x"].dtype == np.float32


def test_digits_levels_and_split():
    train, test = sources.digits("train"), sources.digits("test")
    assert (len(train), len(test)) == (1500, 297)
    x = train.arrays["x"]
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1)
    assert set(np.unique(x)) <= {round(v * 255 / 16) for v in range(17)} and x.max() == 255


def test_process_rows_single_process_covers_batch():
    sh = NamedSharding(mesh_of(8, 2), P(None, "data"))
    assert process_rows(sh, (2, 16), axis=1) == slice(0, 16)


def test_iterator_is_deterministic_and_resumable():
    src = {"x": ArraySource({"x": np.arange(40, dtype=np.float32)[:, None]})}
    mesh = mesh_of(4)
    first = BatchIterator(src, 8, mesh, seed=1, steps_per_dispatch=1)
    run = [np.asarray(next(first)["x"]) for _ in range(7)]  # crosses an epoch (5 steps)
    assert first.state == {"step": 7, "seed": 1}
    first.close()
    resumed = BatchIterator(src, 8, mesh, seed=1, start_step=3, steps_per_dispatch=2)
    b = np.asarray(next(resumed)["x"])
    resumed.close()
    np.testing.assert_array_equal(b, np.stack([run[3][0], run[4][0]]))
    epoch = np.concatenate([r[0, :, 0] for r in run[:5]])
    assert sorted(epoch) == list(range(40))  # one epoch visits every example once
    assert not np.array_equal(run[5][0], run[0][0])  # the next epoch is reshuffled
    np.testing.assert_array_equal(np.sort(run[2][0, :, 0]), np.sort(first.global_indices(0, 2)))


def test_fields_are_drawn_independently():
    data = np.arange(40, dtype=np.float32)[:, None]
    src = {"x": ArraySource({"x": data}), "x1": ArraySource({"x": data})}
    it = BatchIterator(src, 8, mesh_of(4), seed=0)
    batch = next(it)
    it.close()
    assert not np.array_equal(np.asarray(batch["x"]), np.asarray(batch["x1"]))


@pytest.mark.parametrize("processes", [2, 4])
def test_process_rows_in_order_are_the_global_batch_whatever_the_process_count(processes):
    """Process p's rows, as its stream reads them, are rows [p·b, (p+1)·b) of the global
    batch that one process reads alone: the same example in the same row (and so with the
    same t and ε) on 1, 2 or 4 processes. Sharding elements first ([p::P], then batching)
    kept the union but moved examples between rows, and a 4 → 2 process resume diverged."""
    src = {"x": ArraySource({"x": 100 + np.arange(40, dtype=np.float32)[:, None]})}
    it = BatchIterator(src, 8, mesh_of(1), seed=3)
    it.close()
    for s in range(7):  # past one epoch (40 examples = 5 steps)
        glob = it.global_indices(0, s).tolist()
        assert sorted(glob) == sorted(set(glob)), "a step repeats an example"
        rows = []
        for p in range(processes):
            it._shard = (p, processes)
            it._rows = slice(0, 8 // processes)
            stream = it.local_stream(0, src["x"])[s]  # the examples this process reads
            assert it.local_indices(0, s).tolist() == (stream[:, 0] - 100).astype(int).tolist()
            rows += it.local_indices(0, s).tolist()
        assert rows == glob


def test_eval_batches_pad_and_mask():
    src = {"x": ArraySource({"x": np.arange(10, dtype=np.float32)[:, None]})}
    batches = list(eval_batches(src, 4, mesh_of(4)))
    masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
    xs = np.concatenate([np.asarray(b["x"])[:, 0] for b in batches])
    assert masks.tolist() == [1] * 10 + [0] * 2
    assert xs[masks > 0].tolist() == list(range(10))


def test_tfds_mock_data_source_without_tensorflow():
    # data_source works under mock_data (AUTO and USE_CODE policies); __getitems__ does not
    # (tfds' mock binds it without self), so TfdsSource reads items one at a time.
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        src = TfdsSource("cifar10", "train", None, (32, 32, 3))
        assert len(src) == 12
        x = src[3]["x"]
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8


def test_missing_tfds_dataset_names_dataset_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        TfdsSource("cifar10", "train", str(tmp_path), (32, 32, 3))
    msg = str(e.value)
    assert "cifar10" in msg and str(tmp_path) in msg and "tfds build" in msg


def test_missing_image_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="afhq"):
        sources.image_folder(str(tmp_path / "afhq" / "train" / "cat"), 64)


def test_image_folder_resizes(tmp_path):
    from PIL import Image
    (tmp_path / "cat").mkdir()
    for i in range(3):
        Image.fromarray(np.full((128, 96, 3), i * 50, np.uint8)).save(tmp_path / "cat" / f"{i}.png")
    src = sources.image_folder(str(tmp_path / "cat"), 64)
    assert len(src) == 3 and src[2]["x"].shape == (64, 64, 3) and src[2]["x"][0, 0, 0] == 100

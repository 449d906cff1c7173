"""FID statistics and distance, the Inception feature pipeline (no weights needed), and
sample distances."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from nfdm_jax.metrics import fid, inception, sample_distances


def random_spd(rng, dim, rank=None):
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / dim


# ---- Fréchet distance ---------------------------------------------------------------

def test_frechet_distance_diagonal_closed_form():
    """For diagonal covariances, FID = ‖μ₁ − μ₂‖² + Σ (s₁ − s₂)² with s the std devs."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 2.0, 16), rng.uniform(0.1, 2.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = fid.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert abs(got - expected) < 1e-10 * expected


def test_frechet_distance_matches_scipy_sqrtm():
    """A random full-covariance case against the textbook formula with scipy's sqrtm."""
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    c1, c2 = random_spd(rng, 32), random_spd(rng, 32)
    cross = scipy.linalg.sqrtm(c1 @ c2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * cross)
    got = fid.frechet_distance(mu1, c1, mu2, c2)
    assert abs(got - expected) < 1e-8 * abs(expected)


def test_frechet_distance_of_identical_and_singular_statistics():
    """Rank-deficient covariances (fewer samples than features) stay finite; d(P, P) = 0."""
    rng = np.random.default_rng(2)
    mu, c = rng.normal(size=64), random_spd(rng, 64, rank=10)
    # Zero eigenvalues at round-off level have square roots of ~1e-8: hence 1e-6.
    assert abs(fid.frechet_distance(mu, c, mu, c)) < 1e-6 * np.trace(c)
    c2 = random_spd(rng, 64, rank=10)
    d = fid.frechet_distance(mu, c, mu, c2)
    assert np.isfinite(d) and d > 0


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="Shape mismatch"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_batch_and_streaming_agree():
    """Streaming sums around a shift stay exact even with a large common feature offset."""
    rng = np.random.default_rng(3)
    features = 1e3 + rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8))
    full = fid.feature_statistics(features)
    np.testing.assert_allclose(full.sigma, np.cov(features, rowvar=False), rtol=1e-12)
    streamed = fid.streaming_statistics(lambda b: b, np.array_split(features, 7))
    np.testing.assert_allclose(streamed.mu, full.mu, rtol=1e-12)
    np.testing.assert_allclose(streamed.sigma, full.sigma, rtol=1e-9, atol=1e-9)
    assert fid.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)


def test_statistics_cache_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    stats = fid.feature_statistics(rng.normal(size=(20, 5)))
    path = str(tmp_path / "ref" / "stats_cifar10_train")  # no suffix: must be kept as given
    computed = []

    def compute():
        computed.append(1)
        return stats

    first = fid.cached_statistics(path, compute)
    second = fid.cached_statistics(path, compute)
    assert len(computed) == 1 and os.path.exists(path)
    for a, b in ((first, stats), (second, stats)):
        np.testing.assert_array_equal(a.mu, b.mu)
        np.testing.assert_array_equal(a.sigma, b.sigma)


# ---- Inception ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_shapes():
    model = inception.InceptionV3()
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))


def test_inception_architecture_shapes(inception_shapes):
    """Parameter count equals torchvision's Inception-V3 (27,161,264) minus the auxiliary
    classifier (3,326,696) and the 1000-way head (2,049,000); features are [N, 2048]."""
    params = inception_shapes["params"]
    assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == 21_785_568
    assert params["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
    assert inception_shapes["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"].shape == (192,)
    out = jax.eval_shape(inception.InceptionV3().apply, inception_shapes,
                         jnp.zeros((5, 299, 299, 3)))
    assert out.shape == (5, inception.FEATURE_DIM)


def fake_torch_state_dict(shapes, rng):
    """A state_dict in pytorch-fid's naming and layout (OIHW kernels), random values."""
    torch_leaf = {("params", "kernel"): "conv.weight", ("params", "scale"): "bn.weight",
                  ("params", "bias"): "bn.bias", ("batch_stats", "mean"): "bn.running_mean",
                  ("batch_stats", "var"): "bn.running_var"}
    state = {"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = [p.key for p in path]
        collection, module, leaf_name = names[0], names[1:-2], names[-1]
        key = ".".join(module) + "." + torch_leaf[(collection, leaf_name)]
        shape = leaf.shape
        if leaf_name == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1])
            value = rng.normal(size=shape) / math.sqrt(math.prod(shape[1:]))
        elif leaf_name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(size=shape) * 0.1 + (leaf_name == "scale")
        state[key] = value.astype(np.float32)
        state[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.array(0)
    return state


def test_torch_weights_convert_load_and_extract(tmp_path, inception_shapes):
    """A pytorch-fid-style .npz converts to exactly our variable tree and runs end to end
    (on 75×75 inputs, the smallest the network accepts, to stay fast on CPU)."""
    state = fake_torch_state_dict(inception_shapes, np.random.default_rng(5))
    path = str(tmp_path / "pt_inception.npz")
    np.savez(path, **state)
    variables = inception.load_variables(path)
    assert jax.tree.structure(variables) == jax.tree.structure(inception_shapes)
    for ours, expected in zip(jax.tree.leaves(variables), jax.tree.leaves(inception_shapes)):
        assert ours.shape == expected.shape
    np.testing.assert_array_equal(variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    # Our own .npz layout round-trips.
    ours_path = str(tmp_path / "flax_inception.npz")
    inception.save_variables(ours_path, variables)
    reloaded = inception.load_variables(ours_path)
    assert jax.tree.structure(reloaded) == jax.tree.structure(variables)
    extract = inception.feature_extractor(path, size=75)
    images = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    features = extract(images)
    assert features.shape == (2, 2048) and bool(jnp.all(jnp.isfinite(features)))
    assert float(jnp.max(jnp.abs(features[0] - features[1]))) > 0


@pytest.mark.parametrize("path", [None, "/nonexistent/pt_inception.npz"])
def test_missing_weights_raise_a_clear_error(path):
    with pytest.raises(inception.MissingWeightsError) as info:
        inception.feature_extractor(path, flag_name="--config.fid.inception_weights")
    message = str(info.value)
    assert "--config.fid.inception_weights" in message and inception.WEIGHTS_URL in message


def test_preprocess_ranges_channels_and_size():
    gray = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1) * np.ones((2, 4, 4, 1), np.uint8)
    out = inception.preprocess(gray, size=9)
    assert out.shape == (2, 9, 9, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0], -1.0)
    np.testing.assert_allclose(out[1], 1.0)
    # Bilinear, half-pixel centres (torch align_corners=False): a 2-pixel ramp upsampled ×2.
    ramp = jnp.array([-1.0, 1.0]).reshape(1, 1, 2, 1) * jnp.ones((1, 2, 2, 3))
    np.testing.assert_allclose(inception.preprocess(ramp, size=4)[0, 0, :, 0],
                               [-1.0, -0.5, 0.5, 1.0], atol=1e-6)


# ---- sample distances ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian_grid():
    """A 50 × 50 grid of N(0, I) quantiles (a low-variance stand-in for 2500 samples)."""
    q = scipy.stats.norm.ppf((np.arange(50) + 0.5) / 50)
    return jnp.asarray(np.stack(np.meshgrid(q, q), axis=-1).reshape(-1, 2), jnp.float32)


SHIFT = np.array([[1.0, -0.5]])


def test_energy_distance_known_values(gaussian_grid):
    x = gaussian_grid
    energy = jax.jit(sample_distances.energy_distance)
    assert abs(float(energy(x, x))) < 1e-5
    # N(0, I) vs N(Δ, I) in 2-D: 2 E‖Z + Δ‖ − 2 E‖Z‖ with Z ~ N(0, 2I); ‖Z + Δ‖ is Rice.
    # Measured 0.5350 against 0.5333 (quadrature error of the grid).
    norm = float(np.linalg.norm(SHIFT))
    expected = 2 * scipy.stats.rice(norm / math.sqrt(2), scale=math.sqrt(2)).mean() \
        - 2 * math.sqrt(math.pi)
    got = float(energy(x, x + SHIFT))
    assert abs(got - expected) < 0.01 * expected, (got, expected)
    # Random samples: unbiased up to the O(1/√N) noise (sd ≈ 0.026 at N = 4000, measured).
    key_x, key_y = jax.random.split(jax.random.key(7))
    random = float(energy(jax.random.normal(key_x, (4000, 2)),
                          jax.random.normal(key_y, (4000, 2)) + SHIFT))
    assert abs(random - expected) < 0.1, (random, expected)


def test_sliced_wasserstein_known_values(gaussian_grid):
    x = gaussian_grid
    sw = jax.jit(sample_distances.sliced_wasserstein, static_argnames=("num_projections", "p"))
    key = jax.random.key(8)
    assert float(sw(key, x, x)) < 1e-6
    # Projections of N(0, I) and N(Δ, I) are 1-D Gaussians shifted by θᵀΔ, so
    # SW_2² = E_θ (θᵀΔ)² = ‖Δ‖²/D; a shifted copy keeps the order of the projections,
    # leaving only the Monte Carlo error over θ (about 1% with 4096 directions).
    expected = float(np.linalg.norm(SHIFT)) / math.sqrt(2)
    got = float(sw(key, x, x + SHIFT, num_projections=4096))
    assert abs(got - expected) < 0.03 * expected, (got, expected)
    # Scaling: N(0, I) vs N(0, s² I) projects to N(0, 1) vs N(0, s²): W_2 = |1 − s| · std.
    got = float(sw(key, x, 1.5 * x, p=2))
    assert abs(got - 0.5 * float(jnp.std(x))) < 1e-4, got
    with pytest.raises(ValueError):
        sample_distances.sliced_wasserstein(key, x, x[:10])


# ---- offline Fréchet distance in a digits classifier's features ----------------------

@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    from nfdm_jax.data import sources
    from nfdm_jax.metrics import classifier_features as cf

    train, test = sources.digits("train").arrays, sources.digits("test").arrays
    path = str(tmp_path_factory.mktemp("clf") / "digits_classifier.npz")
    arrays = (train["x"], train["label"], test["x"], test["label"])
    return cf.cached(path, *arrays), path, arrays


def test_digits_classifier_is_accurate_and_cached(digits_classifier):
    from nfdm_jax.metrics import classifier_features as cf

    classifier, path, arrays = digits_classifier
    assert classifier.test_accuracy > 0.85  # 10 classes: chance is 0.1
    again = cf.cached(path, *arrays)  # loaded, not retrained
    assert again.test_accuracy == classifier.test_accuracy
    np.testing.assert_array_equal(cf.features(again.params, arrays[2][:5]),
                                  cf.features(classifier.params, arrays[2][:5]))


def test_classifier_save_is_atomic(digits_classifier, tmp_path, monkeypatch):
    """A save that fails half-way leaves the earlier file whole (and no temporary)."""
    from nfdm_jax.metrics import classifier_features as cf

    classifier = digits_classifier[0]
    target = str(tmp_path / "clf.npz")
    cf.save(target, classifier)

    def torn(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(OSError, match="disk full"):
        cf.save(target, classifier)
    monkeypatch.undo()
    assert cf.load(target).test_accuracy == classifier.test_accuracy
    assert os.listdir(tmp_path) == ["clf.npz"]


def test_classifier_frechet_orders_real_digits_below_noise(digits_classifier):
    from nfdm_jax.metrics import classifier_features as cf

    classifier, _, (x_train, _, x_test, _) = digits_classifier
    test = cf.features(classifier.params, x_test)
    same, same_se = cf.frechet_bootstrap(test, test, num_boot=10)
    assert abs(same) < 1e-6 and same_se > 0
    floor, floor_se = cf.frechet_bootstrap(cf.features(classifier.params, x_train), test, 10)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, x_train.shape).astype(np.uint8)
    far, _ = cf.frechet_bootstrap(cf.features(classifier.params, noise), test, num_boot=10)
    assert far > floor + 10 * floor_se

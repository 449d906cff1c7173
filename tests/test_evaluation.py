"""The one evaluator over a padded split (mean ± SE per term), its JSON record, the
report's per-example values, the pixel conversion and the PNG plots."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from matplotlib import image as mpl_image

from nfdm_jax import decoders, evaluation, plotting
from nfdm_jax.data import ArraySource, eval_batches

N, BATCH = 103, 16  # 7 batches, the last with 7 real rows and 9 padded ones


def mesh_of(n):
    return Mesh(np.array(jax.devices()[:n]), ("data",))


@pytest.fixture(scope="module")
def split():
    """Positive data [N, 2, 2]: log x is finite on real rows only if padding is masked."""
    return np.random.default_rng(0).uniform(0.5, 2.0, (N, 2, 2)).astype(np.float32)


def batches_of(data, batch=BATCH, devices=1):
    return eval_batches({"x": ArraySource({"x": data})}, batch, mesh_of(devices))


def log_terms(params, batch, key):
    """Known per-example "terms": params · Σ log x (−inf on zero rows) and half of it."""
    del key
    x = jnp.reshape(batch["x"], (batch["x"].shape[0], -1))
    total = params * jnp.sum(jnp.log(x), axis=-1)
    return {"total": total, "half": 0.5 * total}


def uniform_terms(params, batch, key):
    """Pure Monte Carlo noise U[0, 1) per example: exposes how keys are used."""
    del params
    return {"u": jax.random.uniform(key, (batch["x"].shape[0],))}


@pytest.mark.parametrize("devices", [1, 4])
def test_every_example_counted_once_with_exact_mean_and_se(split, devices):
    result = evaluation.evaluate(log_terms, 2.0, batches_of(split, devices=devices),
                                 jax.random.key(0), num_t_samples=3)
    per_example = 2.0 * np.log(split.astype(np.float64)).reshape(N, -1).sum(-1)
    assert result.count == N and result.num_t_samples == 3
    assert result.terms["total"].mean == pytest.approx(per_example.mean(), rel=1e-5)
    assert result.terms["total"].se == pytest.approx(per_example.std(ddof=1) / math.sqrt(N),
                                                     rel=1e-4)
    assert result.terms["half"].mean == pytest.approx(0.5 * per_example.mean(), rel=1e-5)
    assert result.means()["half_stderr"] == pytest.approx(0.5 * result.terms["total"].se)


def test_mean_se_is_the_sample_formula_and_combines_over_batches():
    """The one mean ± s.e. helper; the evaluator's batch-wise combination gives the same."""
    v = np.random.default_rng(0).standard_normal(37) * 3.0 + 1.0
    mean, se = evaluation.mean_se(v)
    assert mean == pytest.approx(v.mean(), rel=1e-12)
    assert se == pytest.approx(v.std(ddof=1) / math.sqrt(v.size), rel=1e-12)
    parts = np.split(v, [5, 20])
    moments = [[p.size, p.mean(), np.sum(np.square(p - p.mean()))] for p in parts]
    assert evaluation.combine(np.array(moments))[:2] == pytest.approx((mean, se), rel=1e-12)
    assert math.isnan(evaluation.mean_se([2.0]).se)


def test_non_finite_padding_does_not_leak():
    x = np.ones((4, 1), np.float32)
    x[3] = 0.0  # log 0 = −inf on the padded row
    batch = {"x": x, "mask": np.array([1, 1, 1, 0], np.float32)}
    result = evaluation.evaluate(log_terms, 1.0, [batch], jax.random.key(0))
    assert result.count == 3 and result.terms["total"].mean == 0.0
    assert result.terms["total"].se == 0.0


def test_t_samples_and_batches_draw_independent_keys():
    """K averaged U[0,1) draws have standard error √(1/(12 K N)); equal keys would not shrink
    it. With one example per batch, equal batch keys would give identical values (SE 0)."""
    data = np.ones((1000, 1), np.float32)
    se = {}
    for k in (1, 16):
        result = evaluation.evaluate(uniform_terms, None, batches_of(data, 250),
                                     jax.random.key(1), num_t_samples=k)
        se[k] = result.terms["u"].se
        assert result.terms["u"].mean == pytest.approx(0.5, abs=5 * se[k])
    assert se[1] / se[16] == pytest.approx(4.0, rel=0.15)
    assert se[1] == pytest.approx(math.sqrt(1 / 12 / 1000), rel=0.1)
    single = evaluation.evaluate(uniform_terms, None, batches_of(data[:8], 1),
                                 jax.random.key(1))
    assert single.count == 8 and single.terms["u"].se > 0.01


def test_tile_stratifies_each_example():
    """With times stratified over the (tiled) batch, each example's K values cover K strata:
    the spread of its average shrinks like 1/K, not 1/√K."""
    def stratified(params, batch, key):
        n = batch["x"].shape[0]
        return {"t": jnp.mod(jax.random.uniform(key, ()) + jnp.arange(n) / n, 1.0)}

    data = np.ones((64, 1), np.float32)
    values = evaluation.per_example_values(stratified, None, batches_of(data, 64),
                                           jax.random.key(2), num_t_samples=8, tile=8)["t"]
    assert values.shape == (64,)
    assert np.std(values) < 0.5 / 8  # plain averaging of 8 uniforms: std ≈ 0.10
    with pytest.raises(ValueError, match="tile"):
        evaluation.evaluate(stratified, None, batches_of(data, 64), jax.random.key(2),
                            num_t_samples=8, tile=3)


def test_per_example_values_match_evaluate(split):
    values = evaluation.per_example_values(log_terms, 2.0, batches_of(split), jax.random.key(0))
    expected = 2.0 * np.log(split).reshape(N, -1).sum(-1)
    np.testing.assert_allclose(values["total"], expected, rtol=1e-5)


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        evaluation.evaluate(log_terms, 1.0, iter(()), jax.random.key(0))


def test_json_record(tmp_path):
    result = evaluation.Evaluation({"bpd": evaluation.MeanSE(2.5, 0.01)}, 10_000, 128)
    path = tmp_path / "eval" / "7.json"
    evaluation.write_json(str(path), result, checkpoint_step=7, split="test")
    assert json.loads(path.read_text()) == {
        "checkpoint_step": 7, "split": "test", "count": 10_000, "num_t_samples": 128,
        "terms": {"bpd": {"mean": 2.5, "stderr": 0.01}}}


def test_to_pixels_inverts_bin_centres():
    k = np.arange(256)
    np.testing.assert_array_equal(decoders.to_pixels(np.asarray(decoders.centred(k))), k)
    np.testing.assert_array_equal(np.asarray(decoders.to_pixels(decoders.centred(k))), k)
    assert decoders.to_pixels(np.array([-3.0, 3.0])).tolist() == [0, 255]


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


def test_report_nelbo_per_example_is_the_evaluator(toy_config):
    """``report_lib.nelbo_per_example`` (kept for the reports) goes through the one evaluator:
    any N (padded), one value per point, and K-stratified points average to the same bound as
    :func:`evaluation.evaluate` within their standard errors."""
    from experiments import report_lib
    from nfdm_jax.train import experiment

    exp = experiment.setup(toy_config(), jax.devices()[:1])
    params = experiment.create_state(exp).params
    x = np.stack([exp.data.eval["x"][i]["x"] for i in range(50)])
    terms = report_lib.nelbo_per_example(exp.model, params, x, jax.random.key(0),
                                         num_t_samples=4, chunk=16)
    assert terms["total"].shape == (50,) and np.all(np.isfinite(terms["total"]))
    result = evaluation.evaluate(exp.model.per_example, params, batches_of(x), jax.random.key(1),
                                 num_t_samples=4)
    spread = math.hypot(result.terms["total"].se, evaluation.mean_se(terms["total"]).se)
    assert abs(result.terms["total"].mean - terms["total"].mean()) < 4 * spread

"""Tests of nfdm_jax.nets: shapes and sizes of the presets (abstractly, via eval_shape),
and numerics on the tiny preset (bfloat16, remat, dropout, zero-initialised outputs)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import flax
import jax
import jax.ad_checkpoint  # print_saved_residuals; not imported by `import jax`
import jax.numpy as jnp
import numpy as np
import pytest

from nfdm_jax.forward import neural_forward
from nfdm_jax.losses import diffusion_loss
from nfdm_jax.nets import (
    FORWARD_REMATS,
    PRESETS,
    AttentionBlock,
    ForwardMLP2D,
    ForwardUNet,
    MLP2D,
    PredictorMLP2D,
    UNet,
    VolatilityMLP,
    get_preset,
    make_2d_networks,
    make_networks,
)

BATCH = 2

# Pinned parameter counts (reverse, forward). ImageNet-64 matches ADM's published 295.9M
# once its 1000-class label embedding (0.77M) is added.
PARAM_COUNTS = {
    "cifar10": (171_268_099, 42_858_886),
    "imagenet32": (228_149_507, 57_094_662),
    "imagenet64": (295_131_267, 73_849_446),
    "afhq64": (295_136_451, 73_852_038),
    "tiny": (208_947, 53_494),
    "digits": (182_817, 46_498),
}


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _random_params(net, *inputs: jax.Array, seed: int = 0):
    """Random float32 parameters shaped like `net`'s, drawn with NumPy.

    A real `init` zeroes the output layers (hiding everything behind them) and costs
    seconds of XLA compilation on CPU, so the numerics tests use these instead: kernels are
    N(0, 1/fan_in), those of the zero-initialised layers 10x smaller (a net early in
    training), norm scales 1 + noise, everything else small noise.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.key(0), *inputs)["params"]

    def draw(path, leaf) -> jax.Array:
        names = [entry.key for entry in path]
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim > 1:
            zero_init = names[-2] in ("out_conv", "proj_out")
            scale = (0.1 if zero_init else 1.0) / np.sqrt(math.prod(leaf.shape[:-1]))
            return jnp.asarray(scale * noise)
        offset = 1.0 if names[-1] == "scale" else 0.0
        return jnp.asarray(offset + 0.05 * noise)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _rel_err(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# --- presets, abstractly ------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(PRESETS))
def abstract_preset(request):
    """(name, [(net, param shapes, output shapes)] for reverse and forward) via eval_shape."""
    name = request.param
    spec = get_preset(name)
    h, w, c = spec.image_shape
    x = jax.ShapeDtypeStruct((BATCH, h, w, c), jnp.float32)
    t = jax.ShapeDtypeStruct((BATCH,), jnp.float32)
    cond = (
        jax.ShapeDtypeStruct((BATCH, h, w, spec.cond_channels), jnp.float32)
        if spec.cond_channels
        else None
    )
    results = []
    for net in make_networks(name):
        out, variables = jax.eval_shape(net.init_with_output, jax.random.key(0), x, t, cond)
        results.append((net, variables, out))
    return name, results


def test_preset_shapes(abstract_preset):
    name, [(predictor, _, out), (forward, _, (m_bar, l_bar))] = abstract_preset
    h, w, c = PRESETS[name].image_shape
    assert isinstance(predictor, UNet) and isinstance(forward, ForwardUNet)
    for array in (out, m_bar, l_bar):
        assert array.shape == (BATCH, h, w, c)
        assert array.dtype == jnp.float32


def test_preset_param_counts(abstract_preset):
    name, [(_, reverse_vars, _), (_, forward_vars, _)] = abstract_preset
    counts = (_count(reverse_vars["params"]), _count(forward_vars["params"]))
    print(f"{name}: reverse {counts[0]:,} forward {counts[1]:,}")
    assert set(reverse_vars) == {"params"}  # no batch statistics or other collections
    np.testing.assert_allclose(counts, PARAM_COUNTS[name], rtol=1e-3)


def test_forward_net_is_half_width():
    predictor, forward = make_networks("cifar10")
    assert forward.channels == predictor.channels // 2


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown preset"):
        make_networks("mnist")


# --- tiny U-Net numerics ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """(float32 predictor, x, t, random float32 params) of the tiny preset."""
    predictor, _ = make_networks("tiny")
    h, w, c = PRESETS["tiny"].image_shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, h, w, c)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(BATCH,)), jnp.float32)
    return predictor, x, t, _random_params(predictor, x, t)


def _apply(net, params, x: jax.Array, t: jax.Array) -> jax.Array:
    """Evaluation-mode forward pass, jitted (eager dispatch is slower than compiling)."""
    return jax.jit(net.apply)({"params": params}, x, t)


def test_bf16_close_to_f32(tiny):
    net, x, t, params = tiny
    bf16_net, _ = make_networks("tiny", dtype=jnp.bfloat16)
    bf16_params = jax.eval_shape(bf16_net.init, jax.random.key(1), x, t)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))
    out32 = _apply(net, params, x, t)
    out16 = _apply(bf16_net, params, x, t)
    assert out16.dtype == jnp.float32
    assert 0.0 < _rel_err(out16, out32) < 1e-2


def test_remat_same_outputs_and_grads(tiny):
    """Full remat changes memory, not values."""
    net, x, t, params = tiny
    remat_net = net.clone(remat=True)
    remat_shapes = jax.eval_shape(remat_net.init, jax.random.key(0), x, t)["params"]
    assert jax.tree.map(jnp.shape, remat_shapes) == jax.tree.map(jnp.shape, params)

    def loss_and_grad(module, p):
        return jax.value_and_grad(lambda q: jnp.mean(module.apply({"params": q}, x, t) ** 2))(p)

    @jax.jit  # one compilation for both: compiling dominates the runtime
    def both(p):
        return loss_and_grad(net, p), loss_and_grad(remat_net, p)

    (loss, grads), (remat_loss, remat_grads) = both(params)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
    for g_remat, g in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(g_remat, g, rtol=1e-4, atol=1e-6)


def _remat_count(net, x, t) -> int:
    """How many rematerialised (checkpointed) calls one application of `net` traces."""
    params = jax.eval_shape(net.init, jax.random.key(0), x, t)
    jaxpr = str(jax.make_jaxpr(net.apply)(params, x, t))
    return jaxpr.count("remat2[") + jaxpr.count("checkpoint[")  # the name varies with JAX


def _forward_nets_by_remat() -> dict:
    """The forward net of the tiny preset without level-1 attention and with one width
    (fewer distinct ops to compile), for every `forward_remat`."""
    spec = dataclasses.replace(PRESETS["tiny"], channel_mults=(1, 1), attention_resolutions=())
    return {r: make_networks(spec, conv="xla", forward_remat=r)[1] for r in FORWARD_REMATS}


def test_forward_remat_checkpoints_only_the_attention_scores(tiny):
    _, x, t, _ = tiny
    nets = _forward_nets_by_remat()
    counts = {r: _remat_count(nets[r], x, t) for r in FORWARD_REMATS}
    # The only attention of this net is the middle one; "attention" checkpoints its scores.
    assert counts == {"none": 0, "attention": 1}, counts


@pytest.mark.slow  # two eager U-Net jvp + grad passes: ~15 s on 2 cores
def test_forward_remat_same_nfdm_loss_and_grads(tiny):
    """`forward_remat` changes what the backward pass recomputes, not values: the NFDM
    diffusion loss (the forward net under jax.jvp at x and at the prediction) and its
    gradients equal those without remat. Eager: jitted steps would take minutes to
    compile on a CPU."""
    _, x, t, _ = tiny
    nets = _forward_nets_by_remat()
    params = {"forward": _random_params(nets["none"], x, t, seed=1),
              "scale": jnp.asarray([[[[0.9, 1.1, 0.8]]]])}
    eps = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape), jnp.float32)

    def loss_and_grad(remat: str):
        def loss(p):
            process = neural_forward(
                lambda xx, tt: nets[remat].apply({"params": p["forward"]}, xx, tt), delta=0.01)
            # The predictor's own remat is net.remat (test_remat_same_outputs_and_grads).
            return jnp.mean(diffusion_loss(process, lambda z, tt: z * p["scale"],
                                           lambda tt: 0.5 + tt, x, t, eps))

        return jax.value_and_grad(loss)(params)

    loss, grads = loss_and_grad("none")
    assert np.isfinite(loss) and loss > 0
    for remat in FORWARD_REMATS[1:]:
        remat_loss, remat_grads = loss_and_grad(remat)
        np.testing.assert_allclose(remat_loss, loss, rtol=1e-5, err_msg=remat)
        for g_remat, g in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
            # float32 sums in another order: tolerances relative to each array's scale.
            np.testing.assert_allclose(g_remat, g, rtol=1e-4, atol=1e-5 * float(jnp.abs(g).max()),
                                       err_msg=remat)


def test_unknown_forward_remat_raises():
    with pytest.raises(ValueError, match="forward_remat 'full'.*'attention'"):
        make_networks("tiny", forward_remat="full")


def test_dropout_only_in_training_with_key(tiny):
    _, x, t, params = tiny
    net, _ = make_networks(dataclasses.replace(PRESETS["tiny"], dropout=0.3))
    run = functools.partial(net.apply, {"params": params}, x, t)

    @jax.jit  # one compilation for all five variants
    def outputs(key1: jax.Array, key2: jax.Array):
        return (
            run(),
            run(rngs={"dropout": key1}),
            run(train=True, rngs={"dropout": key1}),
            run(train=True, rngs={"dropout": key1}),
            run(train=True, rngs={"dropout": key2}),
        )

    evaluated, evaluated_with_key, train1, train1_again, train2 = outputs(
        *jax.random.split(jax.random.key(2))
    )
    np.testing.assert_array_equal(evaluated_with_key, evaluated)
    np.testing.assert_array_equal(train1_again, train1)
    assert not np.allclose(train1, evaluated)
    assert not np.allclose(train2, train1)
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(functools.partial(run, train=True))


def test_conditioning_channels_are_checked(tiny):
    _, x, t, _ = tiny
    net, _ = make_networks(dataclasses.replace(PRESETS["tiny"], cond_channels=3))
    with pytest.raises(ValueError, match="conditioning channels"):
        jax.eval_shape(net.init, jax.random.key(0), x, t)
    variables = jax.eval_shape(net.init, jax.random.key(0), x, t, x)
    in_kernel = variables["params"]["in_conv"]["kernel"]
    assert in_kernel.shape[-2] == 2 * x.shape[-1]  # x and cond concatenated


def test_head_channels_take_precedence():
    x = jax.ShapeDtypeStruct((1, 4, 4, 16), jnp.float32)
    key = jax.random.key(0)
    jax.eval_shape(AttentionBlock(num_heads=3, head_channels=8, groups=4).init, key, x)
    with pytest.raises(ValueError, match="attention heads"):
        jax.eval_shape(AttentionBlock(num_heads=3, head_channels=None, groups=4).init, key, x)


def test_attention_remat_keeps_no_scores_and_changes_no_values(capsys):
    """`remat_scores` drops the [..., L, L] logits and softmax from what the backward pass of
    a jvp keeps (they grow with the tokens, not the width), and gives the same outputs,
    tangents and gradients."""
    side, c = 4, 8
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, side, side, c)), jnp.float32)
    tokens = side * side
    scores = re.compile(rf"\[(\d+,)+{tokens},{tokens}\]")
    block = AttentionBlock(head_channels=c // 2, groups=4)
    params = _random_params(block, x)

    def loss(module, p):
        # A tangent along x, as the time tangent reaches attention inside the forward net.
        out, dout = jax.jvp(lambda xx: module.apply({"params": p}, xx), (x,), (x ** 2,))
        return jnp.sum(out ** 2) + jnp.sum(jnp.sin(dout))

    kept = {}
    for remat in (False, True):
        module = block.clone(remat_scores=remat)
        jax.ad_checkpoint.print_saved_residuals(functools.partial(loss, module), params)
        kept[remat] = len(scores.findall(capsys.readouterr().out.replace(" ", "")))
    assert kept[False] >= 2 and kept[True] == 0, kept

    value, grads = jax.value_and_grad(functools.partial(loss, block))(params)
    remat_value, remat_grads = jax.value_and_grad(
        functools.partial(loss, block.clone(remat_scores=True)))(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    for g_remat, g in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(g_remat, g, rtol=1e-5, atol=1e-6)


def test_zero_forward_net_gives_straight_path(tiny):
    _, x, t, _ = tiny
    _, forward = make_networks("tiny")
    # The output conv alone decides that the output is zero, so its real initial value on
    # top of an arbitrary body proves the claim for every body. Jitting only the head's
    # init lets XLA drop the body's RNG, which would otherwise take seconds to compile.
    head = jax.jit(lambda key: forward.init(key, x, t)["params"]["out_conv"])(jax.random.key(3))
    params = _random_params(forward, x, t) | {"out_conv": head}
    m_bar, l_bar = _apply(forward, params, x, t)
    assert m_bar.shape == l_bar.shape == x.shape
    np.testing.assert_array_equal(m_bar, 0.0)
    np.testing.assert_array_equal(l_bar, 0.0)

    log_delta = jnp.log(1e-2)
    tt = t.reshape(-1, 1, 1, 1)
    mu = (1 - tt) * x + tt * (1 - tt) * m_bar
    log_sigma = (1 - tt) * log_delta + tt * (1 - tt) * l_bar
    np.testing.assert_array_equal(mu, (1 - tt) * x)
    np.testing.assert_array_equal(log_sigma, jnp.broadcast_to((1 - tt) * log_delta, x.shape))


# --- MLPs ---------------------------------------------------------------------------------


def _init_apply(net, *args, **kwargs):
    """Initialise and apply `net` under one jit."""
    return jax.jit(lambda: net.init_with_output(jax.random.key(4), *args, **kwargs)[0])()


def test_2d_networks_shapes_and_zero_forward():
    predictor, forward = make_2d_networks(hidden=32, depth=2)
    assert isinstance(predictor, PredictorMLP2D) and isinstance(forward, ForwardMLP2D)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)
    cond = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    t = jnp.linspace(0.0, 1.0, 5)

    out = _init_apply(predictor, x, t, cond)
    assert out.shape == (5, 2)
    assert float(jnp.max(jnp.abs(out))) > 0.0   # random last layer by default
    zero = _init_apply(predictor.clone(zero_init_output=True), x, t, cond)
    np.testing.assert_array_equal(zero, 0.0)
    assert _init_apply(predictor, x, 0.5).shape == (5, 2)  # scalar t broadcasts
    m_bar, l_bar = _init_apply(forward, x, t, train=True)
    assert m_bar.shape == l_bar.shape == (5, 2)
    np.testing.assert_array_equal(m_bar, 0.0)
    np.testing.assert_array_equal(l_bar, 0.0)


def test_mlp2d_out_dim():
    out = _init_apply(MLP2D(hidden=16, depth=1, out_dim=7), jnp.ones((3, 4)), jnp.full((3,), 0.2))
    assert out.shape == (3, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(), (4,)])
def test_volatility_zero_init(shape):
    t = jnp.full(shape, 0.3)
    out = _init_apply(VolatilityMLP(), t)
    assert out.shape == shape
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("matmul", [True, False])
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_matches_flax_conv_values_and_gradients(matmul, kernel):
    """Conv (patches @ kernel on CPU, an XLA convolution elsewhere) is nn.Conv: same
    parameter tree, same outputs, same gradients for inputs and parameters."""
    from nfdm_jax.nets import layers

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 4, 3))
    ours = layers.Conv(5, kernel, impl="matmul" if matmul else "xla")
    ref = flax.linen.Conv(5, (kernel, kernel), padding="SAME")
    params = ours.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    assert jax.tree.structure(params) == jax.tree.structure(ref.init(jax.random.PRNGKey(1), x))
    loss = lambda net: lambda p, x: jnp.sum(jnp.sin(net.apply(p, x)))  # noqa: E731
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(loss(ours), argnums=(0, 1))(params, x),
                    jax.grad(loss(ref), argnums=(0, 1))(params, x)):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5), a, b)

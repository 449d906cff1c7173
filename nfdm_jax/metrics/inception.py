"""The FID Inception-V3 (pool3, 2048-d features) in Flax linen.

This is the network of TensorFlow's original FID code ("inception-2015-12-05"), as
ported to PyTorch by pytorch-fid: torchvision's Inception-V3 with the FID patches
(average pools that ignore padding in Mixed_5b–5d, 6b–6e and 7b; a *max* pool in the
pool branch of Mixed_7c) and 1008 classes (the head is unused here). Inputs are NHWC
images in [−1, 1], resized bilinearly (align_corners=False, no antialiasing, as
``torch.nn.functional.interpolate``) to 299 × 299; features are the global average of
the last block, ``[N, 2048]``.

Weights (not downloadable from our machines). The standard file is pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` at :data:`WEIGHTS_URL` (pytorch-fid's release
"fid_weights": the TF graph of
http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz
converted to PyTorch). Turn it into an ``.npz`` of NumPy arrays on any machine with torch:

    import numpy as np, torch
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("pt_inception-2015-12-05.npz", **{k: v.numpy() for k, v in sd.items()})

and pass that file as ``weights_path``. :func:`load_variables` accepts it as is (the
torch names are converted by :func:`convert_torch_state_dict`: ``A.B.conv.weight``
``[O, I, kh, kw]`` → ``params/A/B/conv/kernel`` ``[kh, kw, I, O]``; ``bn.weight/bias``
→ ``params/…/bn/scale/bias``; ``bn.running_mean/var`` → ``batch_stats/…/bn/mean/var``),
as well as an ``.npz`` already in our layout (keys ``params/...``, ``batch_stats/...``,
see :func:`save_variables`) or a ``.pkl`` of the variables pytree.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Variables = dict[str, Any]

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
# PyTorch's BatchNorm in BasicConv2d uses eps = 0.001.
_BN_EPS = 1e-3


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (running statistics) + ReLU, torchvision's layout."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.strides,
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x: Array) -> Array:
    # TF's average pool ignores the zero padding (count_include_pad=False).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool(x: Array, strides: int, pad: int) -> Array:
    return nn.max_pool(x, (3, 3), strides=(strides, strides),
                       padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b–5d: 1×1, 5×5, double 3×3 and pool branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 → 17."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b–6e: factorised 7×7 branches."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 → 8."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool branch) and Mixed_7c (``max_pool=True``, the FID quirk)."""

    max_pool: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_same(x)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-V3 up to pool3: images ``[N, H, W, 3]`` in [−1, 1] → ``[N, 2048]``.

    Apply with ``{"params": ..., "batch_stats": ...}``; inputs must already be
    299 × 299 (see :func:`preprocess`), though any size ≥ 75 runs.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2, 0)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2, 0)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def preprocess(images: Array, size: int = INPUT_SIZE) -> Array:
    """Images ``[N, H, W, C]`` (uint8 in {0..255} or float in [−1, 1], C = 1 or 3)
    → float32 ``[N, size, size, 3]`` in [−1, 1], bilinear as torch's ``interpolate``."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 127.5 - 1.0
    if x.shape[-1] == 1:
        x = jnp.broadcast_to(x, x.shape[:-1] + (3,))
    return jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)


def _torch_key_to_path(key: str) -> tuple[str, ...] | None:
    """``Mixed_5b.branch1x1.conv.weight`` → ``("params", "Mixed_5b", "branch1x1", "conv",
    "kernel")``; ``None`` for entries we do not use (classifier, batch counters)."""
    if key.startswith("fc.") or key.endswith(".num_batches_tracked"):
        return None
    *module, layer, leaf = key.split(".")
    names = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
             ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
             ("bn", "running_var"): ("batch_stats", "var")}
    if (layer, leaf) not in names:
        raise ValueError(f"Unexpected entry in the Inception state_dict: {key!r}")
    collection, ours = names[(layer, leaf)]
    return (collection, *module, layer, ours)


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> Variables:
    """pytorch-fid's FID Inception ``state_dict`` (values as NumPy arrays) → Flax variables."""
    variables: Variables = {}
    for key, value in state_dict.items():
        path = _torch_key_to_path(key)
        if path is None:
            continue
        value = np.asarray(value, np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
        node = variables
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return variables


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> Variables:
    tree: Variables = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def save_variables(path: str, variables: Mapping[str, Any]) -> None:
    """Writes variables to an ``.npz`` with ``/``-joined keys (``params/Mixed_5b/...``)."""
    with open(path, "wb") as f:  # a file object stops NumPy appending ".npz"
        np.savez(f, **_flatten(variables))


class MissingWeightsError(FileNotFoundError):
    """The FID Inception weights file was not given or does not exist."""


def load_variables(weights_path: str | None, *, flag_name: str = "weights_path") -> Variables:
    """Loads FID Inception variables from ``.npz`` (torch or our naming) or ``.pkl``.

    Args:
      weights_path: the file; ``None`` or a missing file raises :class:`MissingWeightsError`.
      flag_name: how the caller exposes the path (e.g. a config field), for the error.
    """
    if not weights_path or not os.path.isfile(weights_path):
        given = "none was given" if not weights_path else f"{weights_path!r} does not exist"
        raise MissingWeightsError(
            f"FID needs the Inception-V3 FID weights: set {flag_name} to their file "
            f"({given}). Download {WEIGHTS_URL} where you have internet and convert it to "
            "an .npz as described in nfdm_jax/metrics/inception.py.")
    if weights_path.endswith(".pkl"):
        with open(weights_path, "rb") as f:
            tree = pickle.load(f)
        flat = _flatten(tree)
    else:
        with np.load(weights_path) as data:
            flat = {k: data[k] for k in data.files}
    if any("." in key for key in flat):
        return convert_torch_state_dict(flat)
    return _unflatten(flat)


def feature_extractor(weights_path: str | None, *, flag_name: str = "weights_path",
                      size: int = INPUT_SIZE) -> Callable[[Array], Array]:
    """A jitted ``images [N, H, W, C] -> pool3 features [N, 2048]`` (float32).

    Images as in :func:`preprocess`. Loads the weights once (see the module docstring).
    """
    variables = jax.tree.map(jnp.asarray, load_variables(weights_path, flag_name=flag_name))
    model = InceptionV3()
    # Variables are an argument, not closed over, so they are not baked into the program.
    apply = jax.jit(lambda v, images: model.apply(v, preprocess(images, size)))
    return lambda images: apply(variables, images)

"""Random-access data sources: ``len(source)`` examples, ``source[i]`` a dict of arrays.

Images are ``uint8`` ``[H, W, C]`` under key ``"x"``; 2-D points are ``float32`` ``[2]``.
All sources are deterministic functions of the index, which makes iteration resumable
and lets each process read only its own indices.
"""
from __future__ import annotations

import os
from typing import Mapping, Protocol

import numpy as np

Example = dict[str, np.ndarray]


class Source(Protocol):
    """A finite, random-access sequence of examples."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where the config says; the message says how to prepare it."""


class ArraySource:
    """Examples held in memory as equal-length numpy arrays keyed by field name."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError("fields have different lengths: "
                             f"{ {k: len(v) for k, v in arrays.items()} }")
        self.arrays = dict(arrays)
        self._len = lengths.pop()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Example:
        return {k: v[index] for k, v in self.arrays.items()}

    def take(self, indices: np.ndarray) -> Example:
        """Vectorised gather of a batch ``[len(indices), ...]`` (faster than per-item)."""
        return {k: v[indices] for k, v in self.arrays.items()}


class TfdsSource:
    """A TFDS split read through ``tfds.data_source`` (ArrayRecord; no TensorFlow needed).

    Only the image is kept, under ``"x"``. Images whose shape differs from
    ``image_shape`` raise, since the networks are built for one resolution.
    """

    def __init__(self, name: str, split: str, data_dir: str | None,
                 image_shape: tuple[int, int, int]):
        import tensorflow_datasets as tfds  # Imported lazily: slow, and only image configs need it.

        try:
            # download=False: a missing dataset must fail here, never start a download.
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            size = len(self._ds)
        except Exception as e:
            # tfds raises several types (NotImplementedError, AssertionError...).
            raise DatasetNotFoundError(_tfds_help(name, split, data_dir, e)) from e
        if size == 0:
            raise DatasetNotFoundError(_tfds_help(name, split, data_dir, "the split is empty"))
        self.image_shape = tuple(image_shape)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> Example:
        image = np.asarray(self._ds[int(index)]["image"], np.uint8)
        if image.shape != self.image_shape:
            raise ValueError(f"example {index} has shape {image.shape}, "
                             f"expected {self.image_shape}")
        return {"x": image}


def _tfds_help(name: str, split: str, data_dir: str | None, cause: object) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return (
        f"TFDS dataset {name!r} (split {split!r}) is not available in data_dir {where!r} "
        f"in ArrayRecord format ({cause}).\n"
        f"Prepare it on a machine with internet access and copy the folder over:\n"
        f"  pip install tensorflow tensorflow-datasets\n"
        f"  tfds build {name} --data_dir={where} --file_format=array_record\n"
        f"then pass --config.data.data_dir={where}. Datasets built as TFRecord must be "
        f"rebuilt with --file_format=array_record for random access.")


def digits(split: str) -> ArraySource:
    """scikit-learn's bundled 8×8 digits (1797 images, 17 grey levels) as uint8 ``[8, 8, 1]``.

    Levels v ∈ {0..16} map to round(v · 255 / 16) so that the 8-bit likelihood
    conventions apply unchanged. The split is fixed: the first 1500 images train,
    the remaining 297 test. Examples also hold the class, ``"label"`` (int32, for the
    classifier of ``nfdm_jax.metrics.classifier_features``).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images  # [1797, 8, 8] floats in {0..16}
    pixels = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    parts = {"train": slice(0, 1500), "test": slice(1500, None)}
    if split not in parts:
        raise ValueError(f"digits has splits {sorted(parts)}, not {split!r}")
    return ArraySource({"x": pixels[parts[split]], "label": labels[parts[split]]})


def image_folder(root: str, resolution: int) -> ArraySource:
    """All images under ``root`` (recursively), resized to ``resolution``², as uint8 ``[H, W, 3]``.

    For AFHQ, ``root`` is e.g. ``afhq/train/cat``. Images are loaded once into memory
    (AFHQ-64: ~60 MB per class) in sorted path order, so indices are stable.
    """
    from PIL import Image

    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"image folder {root!r} does not exist. For AFHQ download the archive "
            f"(https://github.com/clovaai/stargan-v2: bash download.sh afhq-dataset), unpack it "
            f"and set --config.data.data_dir to the folder holding 'train/' and 'val/'.")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith((".png", ".jpg", ".jpeg")))
    if not paths:
        raise DatasetNotFoundError(f"no .png/.jpg images under {root!r}")

    def load(path: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                # Box filtering is the anti-aliased downsampling used for downsampled ImageNet.
                return np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BOX))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on bad files.
            raise DatasetNotFoundError(f"image file {path!r} cannot be read ({type(e).__name__}: "
                                       f"{e}); replace or remove it") from e

    return ArraySource({"x": np.stack([load(p) for p in paths])})

"""The device mesh and the shardings of state and batches.

The mesh has axes ``("data", "model")``. Batches are split over ``"data"``. Parameters
(and with them their EMA and Adam moments, which share their shapes) are sharded over
``"model"`` along their largest dimension that the axis divides, when they have at least
``shard_min_size`` elements; everything else is replicated. With ``model = 1`` this is
plain data parallelism.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(c: ml_collections.ConfigDict, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all) with ``model = c.mesh.model``."""
    devices = list(devices if devices is not None else jax.devices())
    model = c.mesh.model
    if model < 1 or len(devices) % model:
        raise ValueError(f"config.mesh.model={model} does not divide the {len(devices)} devices")
    shape = (len(devices) // model, model)
    # create_device_mesh orders devices for fast collectives and keeps each process's
    # devices contiguous along 'data', which per-process input loading relies on.
    return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True),
                ("data", "model"))


def param_spec(shape: tuple[int, ...], model_size: int, min_size: int) -> P:
    """Shard the largest dimension divisible by ``model_size`` if the array is large."""
    if model_size == 1 or int(np.prod(shape)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % model_size == 0:
            return P(*[("model" if d == dim else None) for d in range(len(shape))])
    return P()


def tree_shardings(mesh: Mesh, tree: Any, min_size: int) -> Any:
    """``NamedSharding`` s for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct`` s)."""
    model = mesh.shape["model"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x.shape, model, min_size)), tree)


def batch_sharding(mesh: Mesh, leading_steps: bool) -> NamedSharding:
    """Batch axis over ``"data"``; ``leading_steps`` for ``[steps, batch, ...]`` stacks."""
    return NamedSharding(mesh, P(None, "data") if leading_steps else P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

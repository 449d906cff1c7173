"""The device mesh and the shardings of state and batches.

The mesh has axes ``("data", "model")``. Batches are split over ``"data"``. Parameters
(and with them their EMA and Adam moments, which share their shapes) are sharded over
``"model"`` along their largest dimension that the axis divides, when they have at least
``shard_min_size`` elements; everything else is replicated. With ``model = 1`` this is
plain data parallelism.

``mesh.state_over_data`` (ZeRO-1 style) also shards the EMA and the optimiser state over
``"data"``: each device keeps and updates 1/data of them, which are 3/4 of the state. The
parameters stay replicated, so the updated ones are all-gathered; XLA can fuse that with the
gradient all-reduce into a reduce-scatter and an all-gather, in a ring the same bytes as the
all-reduce alone (``benchmarks/scale.py`` measures what a compiled step does).
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


def param_spec(shape: tuple[int, ...], model_size: int, min_size: int,
               data_size: int = 1) -> P:
    """Shard the largest dimension divisible by ``model_size`` if the array is large; with
    ``data_size > 1``, also the largest other dimension divisible by ``data_size``."""
    if int(np.prod(shape)) < min_size:
        return P()
    axes: list[Any] = [None] * len(shape)
    for name, size in (("model", model_size), ("data", data_size)):
        if size == 1:
            continue
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if axes[dim] is None and shape[dim] % size == 0:
                axes[dim] = name
                break
    return P(*axes) if any(axes) else P()


def tree_shardings(mesh: Mesh, tree: Any, min_size: int, over_data: bool = False) -> Any:
    """``NamedSharding`` s for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct`` s);
    ``over_data``: also over the ``"data"`` axis (:func:`param_spec`)."""
    model, data = mesh.shape["model"], mesh.shape["data"] if over_data else 1
    return jax.tree.map(
        lambda x: NamedSharding(mesh, param_spec(x.shape, model, min_size, data)), tree)


def state_shardings(c: ml_collections.ConfigDict, mesh: Mesh, state: Any) -> Any:
    """The shardings of a ``TrainState`` (of arrays or ``ShapeDtypeStruct`` s): parameters
    by :func:`tree_shardings`; the EMA and optimiser state also over ``"data"`` when
    ``c.mesh.state_over_data``."""
    min_size, zero = c.mesh.shard_min_size, c.mesh.state_over_data
    return state.replace(
        step=replicated(mesh), params=tree_shardings(mesh, state.params, min_size),
        ema_params=tree_shardings(mesh, state.ema_params, min_size, zero),
        opt_state=tree_shardings(mesh, state.opt_state, min_size, zero))


def batch_sharding(mesh: Mesh, leading_steps: bool) -> NamedSharding:
    """Batch axis over ``"data"``; ``leading_steps`` for ``[steps, batch, ...]`` stacks."""
    return NamedSharding(mesh, P(None, "data") if leading_steps else P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

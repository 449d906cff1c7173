"""One validation pass over everything a user can set, before anything is compiled or written.

:func:`validate_run` (called once by ``experiments/run.py``) checks, in order: every config
field (:func:`check_config`: steps, batch sizes against devices and processes, seeds,
sampler, mesh, checkpoint fields, learning-rate schedule, and the model, :func:`check_model`),
the workdir (a writable directory; for eval and sample, one holding checkpoints), that a
resumed workdir was trained with the same model and data fields (``config.json``), then
opens the datasets (paths and image files) and checks the batch sizes and the model's
per-channel fields against them. It is the one validator: the model and the training loop
trust the config they are given, and each entry path (``experiments/run.py``, the reports,
the benchmarks) calls it once. Each problem raises :class:`ConfigError` (a ``ValueError``)
with one line naming the field or file and what is allowed. Nothing here writes to disk or
compiles: a run that fails any check leaves its workdir untouched.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import jax
import ml_collections

from nfdm_jax import decoders, models, nets
from nfdm_jax.data import DatasetSpec, make_datasets
from nfdm_jax.data.registry import DATASETS
from nfdm_jax.data.toy2d import DENSITIES

MODES = ("train", "eval", "sample")
SAMPLERS = ("sde", "euler", "heun")
SCHEDULES = ("polynomial", "constant")
DTYPES = ("float32", "bfloat16")
# Fields that must equal the stored config.json on resume (they define the model and the
# data it was trained on), except those that may change: where the data lives, the eval
# size, and how the networks are computed (remat, convolution implementation: memory and
# speed on the machine at hand, not the function trained).
RESUME_FIXED = ("seed", "model", "net", "data")
RESUME_FREE = ("data.data_dir", "data.eval_size", "net.remat", "net.forward_remat", "net.conv")
MAX_SEED = 2 ** 31
# Fields holding a tuple of numbers (None: unset); an override such as
# --config.model.data_std=abc would otherwise parse as a tuple of characters.
NUMBER_TUPLES = ("model.data_mean", "model.data_std", "model.obstacle_centre",
                 "data.target_offset", "data.source_offset")
# The 2-D pools are generated in memory (float64 while drawn): 2**26 points take ~1 GB.
MAX_TOY_SIZE = 2 ** 26


class ConfigError(ValueError):
    """A config field, flag or file a user set is invalid; the message names it."""


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(c: ml_collections.ConfigDict, field: str, low: int, note: str = "") -> None:
    value = _lookup(c, field)
    _require(_is_int(value) and value >= low, field, value, f"an integer >= {low}{note}")


def _lookup(c: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        c = c[part]
    return c


def check_config(config: ml_collections.ConfigDict,
                 devices: Optional[Sequence[jax.Device]] = None,
                 process_count: Optional[int] = None) -> None:
    """Every field of ``config`` on its own and against the devices and processes.

    Pure: reads no file and compiles nothing. Raises :class:`ConfigError`.
    """
    c = config
    check_types(c)
    _check_finite(c)
    _require(_is_int(c.seed) and 0 <= c.seed < MAX_SEED, "seed", c.seed,
             f"an integer in [0, {MAX_SEED})")
    _check_train(c)
    _check_optim(c)
    _check_sample(c)
    _check_net_and_data(c)
    check_model(c)
    _check_devices(c, len(devices) if devices is not None else jax.device_count(),
                   process_count if process_count is not None else jax.process_count())


def check_types(c: ml_collections.ConfigDict) -> None:
    """The fields of :data:`NUMBER_TUPLES` hold numbers. Also run on the parsed flags
    (``experiments/run.py``), where a wrong type is an unparsable flag."""
    for field in NUMBER_TUPLES:
        value = _lookup(c, field)
        _require(value is None or (isinstance(value, (tuple, list))
                                   and all(isinstance(v, (int, float)) for v in value)),
                 field, value, "a tuple of numbers, e.g. '(0.5, 0.5)'")


def _check_finite(c: ml_collections.ConfigDict) -> None:
    """Every float anywhere in the config (alone or in a tuple) is finite: a NaN or an
    infinity would otherwise surface only as non-finite metrics after compiling."""
    for field, value in _flat(c.to_dict()).items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            _require(not isinstance(v, float) or math.isfinite(v), field, value,
                     "finite numbers only (no NaN or infinity)")


def _check_train(c: ml_collections.ConfigDict) -> None:
    t = c.train
    _int_at_least(c, "train.num_steps", 1)
    _int_at_least(c, "train.steps_per_dispatch", 1)
    _require(t.num_steps % t.steps_per_dispatch == 0, "train.num_steps", t.num_steps,
             f"a multiple of config.train.steps_per_dispatch={t.steps_per_dispatch}")
    _int_at_least(c, "train.batch_size", 1)
    _int_at_least(c, "train.eval_batch_size", 0, " (0 = batch_size)")
    for field in ("log_every", "eval_every", "checkpoint_every"):
        _int_at_least(c, f"train.{field}", 0, " (0 = never)")
    _int_at_least(c, "train.eval_t_samples", 1)
    _int_at_least(c, "train.max_to_keep", 1, " (checkpoints kept; 0 would delete them all)")


def _check_optim(c: ml_collections.ConfigDict) -> None:
    o = c.optim
    _require(_is_real(o.lr) and o.lr > 0, "optim.lr", o.lr, "a finite number > 0")
    _require(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"one of {SCHEDULES}")
    _int_at_least(c, "optim.warmup_steps", 0)
    for field in ("b1", "b2", "ema_decay"):
        v = o[field]
        _require(_is_real(v) and 0 <= v < 1, f"optim.{field}", v, "a number in [0, 1)")
    _require(_is_real(o.clip_norm) and o.clip_norm > 0, "optim.clip_norm", o.clip_norm,
             "a finite number > 0 (the global-norm clipping threshold)")


def _check_sample(c: ml_collections.ConfigDict) -> None:
    s = c.sample
    _int_at_least(c, "sample.every", 0, " (0 = never)")
    _int_at_least(c, "sample.num", 1)
    _int_at_least(c, "sample.steps", 1)
    _require(s.method in SAMPLERS, "sample.method", s.method, f"one of {SAMPLERS}")
    _require(isinstance(s.rho, (int, float)) and math.isfinite(s.rho) and s.rho > 0,
             "sample.rho", s.rho, "a positive number (1 = uniform time grid)")


def _check_net_and_data(c: ml_collections.ConfigDict) -> None:
    # Generic network fields only (check_model owns the model's rules); each is checked
    # where the schema has it, so that networks may add or drop fields.
    n = c.net
    if "dtype" in n:
        _require(n.dtype in DTYPES, "net.dtype", n.dtype, f"one of {DTYPES}")
    if "forward_remat" in n:
        _require(n.forward_remat in nets.FORWARD_REMATS, "net.forward_remat", n.forward_remat,
                 f"one of {nets.FORWARD_REMATS}")
    for field in ("hidden", "depth"):
        if field in n:
            _int_at_least(c, f"net.{field}", 1)
    _require(c.data.name in DATASETS, "data.name", c.data.name, f"one of {sorted(DATASETS)}")
    if "preset" in c.net and c.data.name != "toy2d":
        _require(c.net.preset in nets.PRESETS, "net.preset", c.net.preset,
                 f"one of {sorted(nets.PRESETS)}")
    for field in ("size", "eval_size"):
        value = c.data[field]
        _require(_is_int(value) and 1 <= value <= MAX_TOY_SIZE, f"data.{field}", value,
                 f"an integer in [1, {MAX_TOY_SIZE}] (a 2-D pool is held in memory: "
                 f"{MAX_TOY_SIZE} points take ~1 GB)")
    if c.data.name == "toy2d":
        _require(c.data.target in DENSITIES, "data.target", c.data.target,
                 f"one of {sorted(DENSITIES)}")
        _require(not c.data.source or c.data.source in DENSITIES, "data.source", c.data.source,
                 f"'' (no bridge) or one of {sorted(DENSITIES)}")
    _int_at_least(c, "mesh.model", 1)
    _int_at_least(c, "mesh.shard_min_size", 0)


def check_model(config: ml_collections.ConfigDict) -> None:
    """The model fields against each other; which volatilities and parameterizations a
    model allows comes from :data:`nfdm_jax.models.MODELS`."""
    m = config.model
    if m.name not in models.MODELS:
        raise ConfigError(f"config.model.name={m.name!r}; choose from {tuple(models.MODELS)}")
    spec = models.MODELS[m.name]
    if config.data.convention not in decoders.CONVENTIONS:
        raise ConfigError(f"config.data.convention={config.data.convention!r}; "
                          f"choose from {decoders.CONVENTIONS}")
    if m.volatility not in spec.volatilities:
        why = " (the NELBO divides by g²)" if m.volatility == "zero" else ""
        raise ConfigError(f"config.model.volatility={m.volatility!r} is not allowed for "
                          f"{m.name}{why}; choose from {spec.volatilities}")
    if m.parameterization not in spec.parameterizations:
        raise ConfigError(f"config.model.parameterization={m.parameterization!r} is not allowed "
                          f"for {m.name}; choose from {spec.parameterizations}")
    if m.volatility_base not in models.VOLATILITY_BASES:
        raise ConfigError(f"config.model.volatility_base={m.volatility_base!r}; "
                          f"choose from {tuple(models.VOLATILITY_BASES)}")
    if spec.bridge and "neural_matched" in (m.volatility, m.volatility_base):
        raise ConfigError("neural_matched volatility is derived for the unpinned neural process; "
                          "bridges (nfbm) need config.model.volatility_base='delta_matched'")
    if m.parameterization == "edm" and (m.data_mean is None or m.data_std is None):
        raise ConfigError("config.model.parameterization='edm' needs config.model.data_mean and "
                          "data_std (per channel); measure them with "
                          "nfdm_jax.data.channel_stats(config.data, config.seed)")
    exponents = tuple(m.fourier_exponents)
    if exponents and (m.parameterization not in ("edm", "eps")
                      or not all(isinstance(n, int) for n in exponents)):
        raise ConfigError(f"config.model.fourier_exponents={exponents} needs integer exponents "
                          "and config.model.parameterization 'edm' or 'eps' (the predictors "
                          f"that take input features), not {m.parameterization!r}")
    if not 0.0 < m.delta < 1.0:
        raise ConfigError(f"config.model.delta={m.delta} must lie in (0, 1)")
    if m.forward_sigma not in (None, "learned", "base"):
        raise ConfigError(f"config.model.forward_sigma={m.forward_sigma!r}; choose 'learned' "
                          "(the forward network sets σ), 'base' (σ of the untrained process) "
                          "or None (the model's default)")
    if m.forward_sigma == "base" and not (spec.forward_net and not spec.bridge):
        raise ConfigError("config.model.forward_sigma='base' holds the neural process's σ: "
                          f"only nfdm and nfdm_ot have one, not model.name={m.name!r}")


def _check_devices(c: ml_collections.ConfigDict, devices: int, processes: int) -> None:
    _require(devices % c.mesh.model == 0, "mesh.model", c.mesh.model,
             f"a divisor of the {devices} devices")
    data_axis = devices // c.mesh.model
    for field in ("batch_size", "eval_batch_size"):
        value = c.train[field] or c.train.batch_size
        _require(value % data_axis == 0 and value % processes == 0, f"train.{field}", value,
                 f"a multiple of the {data_axis} data-parallel devices ({devices} devices / "
                 f"mesh.model={c.mesh.model}) and of the {processes} processes")


def check_workdir(workdir: str, mode: str) -> None:
    """A directory (or creatable one) this process may write; eval/sample need checkpoints."""
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r} is invalid: one of {MODES}")
    if not workdir:
        raise ConfigError("--workdir is empty: pass a directory")
    if "://" in workdir:  # Remote storage (gs://...): Orbax checks it when opening.
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir} is a file, not a directory: pass a directory")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={workdir} is not writable ({existing} is read-only or "
                          f"not a directory): pass a writable directory")
    if mode != "train" and not checkpoint_steps(workdir):
        raise ConfigError(f"--workdir={workdir} holds no checkpoint to {mode} from "
                          f"({os.path.join(workdir, 'checkpoints')}): train first")


def checkpoint_steps(workdir: str) -> list[int]:
    """Step folders in ``workdir/checkpoints`` (without opening Orbax)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: tree}


def stored_config_differences(config: ml_collections.ConfigDict, stored: dict) -> list[str]:
    """``"field (stored X, now Y)"`` for each model/net/data/seed field that differs."""
    now = json.loads(config.to_json_best_effort(sort_keys=True))
    now = _resolved(_flat({k: now.get(k) for k in RESUME_FIXED}))
    old = _resolved(_flat({k: stored.get(k) for k in RESUME_FIXED}))
    return [f"{k} (stored {old.get(k, 'absent')!r}, now {now.get(k, 'absent')!r})"
            for k in sorted(set(now) | set(old))
            if k not in RESUME_FREE and old.get(k) != now.get(k)]


def _resolved(flat: dict[str, Any]) -> dict[str, Any]:
    """Defaults spelt out, so that a config is compared by what it trains: forward_sigma None
    is the model's default; a config from before the field existed learned σ."""
    if flat.get("model.name") in models.MODELS:
        flat["model.forward_sigma"] = models.resolve_forward_sigma(
            flat["model.name"], flat.get("model.forward_sigma", "learned"))
    return flat


def provenance(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The record saved with each checkpoint: the fields a resume must keep
    (:data:`RESUME_FIXED`), as JSON, for :func:`stored_config_differences`."""
    now = json.loads(config.to_json_best_effort(sort_keys=True))
    return {k: now.get(k) for k in RESUME_FIXED}


def check_stored_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A resumed workdir must be resumed with the same model and data fields, as recorded
    in its ``config.json`` and in its newest checkpoint (which may outlive the former)."""
    if "://" in workdir:
        return
    for source, stored in _stored_records(workdir):
        diff = stored_config_differences(config, stored)
        if diff:
            raise ConfigError(f"--workdir={workdir} was trained with other model/data fields "
                              f"({source}): {'; '.join(diff)}. Use the stored values or a "
                              f"fresh --workdir")


def _stored_records(workdir: str) -> list[tuple[str, dict]]:
    """``[(where, stored config)]`` from ``config.json`` and the newest checkpoint's record.

    A missing record is skipped (training rebuilds ``config.json``; a checkpoint's record
    is verified when it is restored); a ``config.json`` that is not a JSON object is an error.
    """
    out = []
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                stored = json.load(f)
        except (OSError, ValueError) as e:
            stored = e
        if not isinstance(stored, dict):
            what = stored if isinstance(stored, Exception) else f"a JSON {type(stored).__name__}"
            raise ConfigError(f"{path} cannot be read as a config ({what}): delete it (training "
                              f"rebuilds it from the checkpoint's record) or use a fresh --workdir")
        out.append(("config.json", stored))
    steps = checkpoint_steps(workdir)
    if steps:
        record = os.path.join(workdir, "checkpoints", str(steps[-1]), "config", "metadata")
        try:
            with open(record) as f:
                stored = json.load(f)
            if isinstance(stored, dict):
                out.append((f"checkpoint {steps[-1]}", stored))
        except (OSError, ValueError):
            pass
    return out


def check_data(config: ml_collections.ConfigDict, data: DatasetSpec) -> None:
    """Every training field holds at least one global batch; the test split is not empty;
    the model's per-channel fields match the data's channels."""
    for field, source in data.train.items():
        _require(len(source) >= config.train.batch_size, "train.batch_size",
                 config.train.batch_size,
                 f"at most the {len(source)} training examples of {field!r}")
    for field, source in data.eval.items():
        if len(source) == 0:
            raise ConfigError(f"the evaluation split of config.data.name={config.data.name!r} "
                              f"({field!r}) is empty")
    check_model_shape(config, data.shape)


def check_model_shape(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> None:
    """The model fields that depend on the shape of one example (``[C]`` vectors or
    ``[H, W, C]`` images): one ``data_mean`` / ``data_std`` value per channel (or one for
    all), a positive std, and Fourier features only for images."""
    m = config.model
    if m.parameterization == "edm":
        for name in ("data_mean", "data_std"):
            size = len(tuple(m[name]))
            if size not in (shape[-1], 1):
                raise ConfigError(f"config.model.{name} has {size} values; the data have "
                                  f"{shape[-1]} channels (give one per channel)")
        if not all(v > 0 for v in m.data_std):
            raise ConfigError(f"config.model.data_std={tuple(m.data_std)} must be positive")
    if len(shape) == 1 and m.fourier_exponents:
        raise ConfigError("config.model.fourier_exponents is for images (grey levels on a "
                          "lattice); leave it () for vector data")


def validate_run(config: ml_collections.ConfigDict, workdir: str, mode: str,
                 devices: Optional[Sequence[jax.Device]] = None) -> DatasetSpec:
    """Everything :mod:`experiments.run` checks before compiling; returns the opened datasets."""
    check_workdir(workdir, mode)
    check_config(config, devices)
    check_stored_config(config, workdir)
    data = make_datasets(config.data, config.seed)
    check_data(config, data)
    return data

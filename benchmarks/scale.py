"""Scale-out on paper: the real train step compiled for TPU pod slices, no TPU attached.

Run from the repository root (needs the ``libtpu`` wheel, ``pip install -e .[tpu-aot]``)::

    python -m benchmarks.scale                           # the default sweep (hours on 2 cores)
    python -m benchmarks.scale --configs=imagenet64 --models=nfdm --topologies=v5p:2x2x4 \\
        --meshes=1,zero                                  # some of its rows
    python -m benchmarks.scale --table=benchmarks/results/tpu_scale.jsonl   # print the table

Each row builds the step exactly as ``experiments.run`` does (:class:`benchmarks.train_step.
Step`: ``make_train_step``, the mesh, the state shardings, the donated state) at the config's
global batch, compiles it with XLA's TPU compiler for the slice
(``jax.experimental.topologies``) and appends one JSON line to ``--json``:

* ``chips``, the ``data × model`` mesh, ``batch_per_chip``;
* per-chip memory from ``compiled.memory_analysis()`` (GiB): ``args`` (the state's shards:
  ``params``, ``ema``, ``opt`` from the shardings, and the batch), ``out``, ``temp``, and
  ``total`` = args + out − aliased (the donated state's outputs reuse its buffers) + temp +
  code, against the chip's ``hbm``. A step that does not fit fails to compile; the row
  keeps the compiler's count (``total`` from "Used … of … hbm") and ``fits: false``;
* per-chip ``tflop`` and ``gib_accessed`` (``cost_analysis()``);
* ``collectives``: every collective of the compiled HLO by kind and mesh axis, with its
  result bytes per step and the bytes a chip sends over the interconnect (:func:`ici_bytes`);
* ``traffic_gib``: the HBM bytes of the compiled program by network and pass
  (:func:`traffic`), which shows where the bytes accessed go;
* ``est_step_s``, the roofline max(FLOPs / peak, bytes accessed / HBM bandwidth, ICI bytes /
  ICI bandwidth) at the published peaks of :data:`CHIPS`, which term ``bound`` it, and the
  ``chip_hours`` of the config's ``num_steps`` at that time. **An estimate, not a
  measurement**: a step reaches it only if XLA overlaps compute, memory traffic and
  collectives perfectly and the MXUs run at their bf16 peak.

``--hlo_dir`` keeps each compiled HLO (gzip) so that the collectives can be re-read without
recompiling (an ImageNet-64 NFDM compile outgrew a 24 GiB, 2-core host after an hour).
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import os
import re
import time
from typing import Any, Iterable, Optional

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from benchmarks import train_step
from nfdm_jax.train import runtime

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation's published per-chip peaks. JAX drives both TensorCores of a v4 or
    v5p chip as one device (megacore), so a device is a chip."""

    name: str
    tflops: float     # peak bf16 matmul TFLOP/s; float32 matmuls and convolutions run as
    #                   bf16 passes at JAX's default precision on TPUs
    hbm_gib: float    # HBM per chip, GiB
    hbm_gbps: float   # HBM bandwidth, GB/s (1e9 bytes)
    ici_gbps: float   # inter-chip interconnect bandwidth per chip, GB/s
    source: str


CHIPS = {
    "v5p": Chip("TPU v5p", 459.0, 95.0, 2765.0, 1200.0,
                "https://cloud.google.com/tpu/docs/v5p, key specifications: peak bf16 "
                "compute, HBM capacity and bandwidth, bidirectional ICI bandwidth per chip"),
    "v4": Chip("TPU v4", 275.0, 32.0, 1200.0, 1.1e6 / 4096,
               "https://cloud.google.com/tpu/docs/v4, key specifications: peak compute, HBM2 "
               "capacity and bandwidth; ICI: the pod's all-reduce bandwidth (1.1 PB/s) over "
               "its 4096 chips"),
}

TOPOLOGIES = ("v5p:2x2x1", "v5p:2x2x2", "v5p:2x2x4", "v4:2x2x2", "v4:4x4x4")
CONFIGS = ("imagenet64", "cifar10")


# ---------------------------------------------------------------- the compiled HLO

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|c64|c128)\[([\d,]*)\]")
_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s("
                 + "|".join(_KINDS) + r")(-start|-done)?\((.*)$")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, e.g. ``(f32[16]{0:T(128)}, bf16[4,4]{1,0})`` → 96."""
    return sum(_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d]))
               for t, dims in _ARRAY.findall(shape))


def replica_groups(attrs: str, num_devices: int) -> list[list[int]]:
    """The device groups of a collective's attributes, in partition ids (positions in the
    mesh's flattened devices). Three HLO spellings: explicit ``{{0,1},{2,3}}``, iota
    ``[2,2]<=[4]`` / ``[2,2]<=[2,2]T(1,0)``, and mesh axes ``mesh['a'=2,'b'=2] {'b'}`` (the
    devices, in ``device_ids`` order if given, as a row-major array of those axes, grouped
    over the named ones);
    ``collective-permute`` has ``source_target_pairs`` instead, each pair a group."""
    m = re.search(r"(?:replica_groups|source_target_pairs)=(\{\{[\d,{} ]*\}\}|\{\})", attrs)
    if m:
        groups = [[int(v) for v in g.split(",") if v.strip()]
                  for g in re.findall(r"\{([\d, ]*)\}", m.group(1)[1:-1])]
        return [g for g in groups if g] or [list(range(num_devices))]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
    if m:
        shape, dims = ([int(v) for v in m.group(i).split(",")] for i in (1, 2))
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(3):
            ids = ids.transpose([int(v) for v in m.group(3).split(",")])
        return ids.reshape(shape).tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\]"
                  r"(?:T\(([\d,]+)\))?\))?\s*\{([^}]*)\}", attrs)
    if m:
        axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
        ids = np.arange(int(np.prod(sizes)))
        if m.group(2):  # the devices in mesh order: an iota, maybe transposed
            ids = ids.reshape([int(v) for v in m.group(2).split(",")])
            if m.group(3):
                ids = ids.transpose([int(v) for v in m.group(3).split(",")])
        grouped = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(4))]
        rest = [i for i in range(len(names)) if i not in grouped]
        ids = ids.reshape(sizes).transpose(rest + grouped)
        return ids.reshape(-1, int(np.prod([sizes[i] for i in grouped]))).tolist()
    raise ValueError(f"unrecognised replica groups in {attrs[:200]!r}")


def mesh_axis(groups: list[list[int]], mesh_shape: tuple[int, int]) -> str:
    """Which axes of a ``(data, model)`` mesh the groups span: ``data``, ``model``,
    ``data+model`` or ``none`` (groups of one device)."""
    model = mesh_shape[1]
    spans = set()
    for g in groups:
        d, m = np.divmod(np.asarray(g), model)
        if len(set(d.tolist())) > 1:
            spans.add("data")
        if len(set(m.tolist())) > 1:
            spans.add("model")
    return "+".join(a for a in ("data", "model") if a in spans) or "none"


def ici_bytes(kind: str, result_bytes: float, n: int) -> float:
    """Bytes one device sends for a collective over ``n`` devices with result size
    ``result_bytes``, with bandwidth-optimal (ring) algorithms: an all-reduce is a
    reduce-scatter and an all-gather, 2 (n − 1)/n of its size; an all-gather sends its
    own shard to the n − 1 others; a reduce-scatter's input is n results."""
    if n <= 1:
        return 0.0
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n,
              "reduce-scatter": n - 1, "all-to-all": (n - 1) / n, "collective-permute": 1}
    return factor[kind] * result_bytes


def collectives(hlo: str, mesh_shape: tuple[int, int]) -> list[dict[str, Any]]:
    """Every collective instruction of a compiled module's text, summed by (kind, axis):
    ``count``, ``bytes`` (results, per device per step) and ``ici_bytes``. Asynchronous
    pairs count once, with the ``-done`` result and the ``-start`` groups. A ``while``
    body's collectives count once: one step per dispatch (``train.steps_per_dispatch``
    = 1) runs the scan's body once."""
    num_devices = mesh_shape[0] * mesh_shape[1]
    starts: dict[str, str] = {}
    found = []
    for line in hlo.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        name, shape, kind, phase, rest = m.groups()
        if phase == "-start":
            starts[name] = rest
            continue
        if phase == "-done":
            rest = starts[re.match(r"\s*%?([\w.\-]+)", rest).group(1)]
        groups = replica_groups(rest, num_devices)
        size = shape_bytes(shape)
        found.append((kind, mesh_axis(groups, mesh_shape), size,
                      ici_bytes(kind, size, max(len(g) for g in groups))))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, axis, size, sent in found:
        row = out.setdefault((kind, axis), {"kind": kind, "axis": axis, "count": 0,
                                            "bytes": 0, "ici_bytes": 0.0})
        row["count"] += 1
        row["bytes"] += size
        row["ici_bytes"] += sent
    return sorted(out.values(), key=lambda r: -r["bytes"])


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_CONTROL = re.compile(r"(?:body|condition|true_computation|false_computation|"
                      r"branch_computations|to_apply)=\{?%?([\w.\-]+)")
# Moves no bytes of its own, or (copy-start) is counted once at its -done.
_NO_TRAFFIC = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "call", "conditional", "after-all", "partition-id", "replica-id", "copy-start")


def traffic(hlo: str, networks: Iterable[str] = ("ForwardUNet", "UNet")) -> dict[str, float]:
    """GiB read and written per step by the instructions of a compiled module's text, by
    network and pass: ``"<network>/fwd"``, ``"<network>/bwd"`` (the ``op_name`` holds
    ``transpose(``) and ``"rest"``. Each instruction outside a fusion counts its operands'
    and result's bytes once (a fusion keeps its body in registers and VMEM); a ``while``
    body counts once, as in :func:`collectives`. Close to, not equal to, the compiler's
    ``bytes accessed``: it shows where the HBM traffic goes, e.g. that the forward
    network's activations cost more bytes per FLOP than the predictor's."""
    bodies: dict[str, list[str]] = {}
    lines: list[str] = []
    entry = ""
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line[:1].isspace():  # a computation's header; its instructions indent
            lines = bodies.setdefault(m.group(1), [])
            entry = m.group(1) if line.startswith("ENTRY") else entry
        else:
            lines.append(line)
    reached, todo = set(), [entry]
    while todo:  # the computations that run as programs, not fused kernels
        name = todo.pop()
        if name in bodies and name not in reached:
            reached.add(name)
            todo += [c for line in bodies[name] for c in _CONTROL.findall(line)
                     if " call(" in line or "to_apply" not in line]
    parsed = [m.groups() for name in reached for line in bodies[name]
              if (m := _INSTRUCTION.match(line))]
    size = {name: shape_bytes(shape) for name, shape, _, _ in parsed}
    out: dict[str, float] = {}
    for name, _, op, rest in parsed:
        if op in _NO_TRAFFIC:
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
        meta = re.search(r'op_name="([^"]*)"', rest)
        op_name = meta.group(1) if meta else ""
        net = next((n for n in networks if n + ")" in op_name or n + "." in op_name), None)
        group = f"{net}/{'bwd' if 'transpose(' in op_name else 'fwd'}" if net else "rest"
        moved = (2 * size[name] if op == "copy-done"  # its operand is the (to, from, …) tuple
                 else size[name] + sum(size.get(o, 0) for o in operands))
        out[group] = out.get(group, 0.0) + moved / GIB
    return out


# ---------------------------------------------------------------- one row


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: a config (``experiments/<config>.py``), ``nfdm`` or its ``:vdm``, a slice,
    and a mesh: ``mesh.model`` ("1", "2", "4") or ``zero`` (mesh.model = 1 with
    ``mesh.state_over_data``)."""

    config: str
    model: str
    topology: str
    mesh: str
    variant: str = ""     # more config variants, e.g. "tiny" (tests)
    overrides: str = ""   # config fields, e.g. "net.remat=False,net.dtype=bfloat16"

    def experiment_config(self) -> ml_collections.ConfigDict:
        variants = ",".join(filter(None, [self.variant, "vdm" if self.model == "vdm" else ""]))
        c = importlib.import_module(f"experiments.{self.config}").get_config(variants)
        c.unlock()
        for item in filter(None, self.overrides.split(",")):
            path, value = item.split("=", 1)
            *parents, leaf = path.split(".")
            node = c
            for p in parents:
                node = node[p]
            old = node[leaf]  # the value takes the field's type; an unknown field raises
            node[leaf] = (value.lower() == "true" if isinstance(old, bool)
                          else type(old)(value) if isinstance(old, (int, float)) else value)
        c.mesh.model = 1 if self.mesh == "zero" else int(self.mesh)
        c.mesh.state_over_data = self.mesh == "zero"
        c.lock()
        return c

    def command(self) -> str:
        return (f"python -m benchmarks.scale --configs={self.config} --models={self.model} "
                f"--topologies={self.topology} --meshes={self.mesh}"
                + (f" --variant={self.variant}" if self.variant else "")
                + (f" --overrides={self.overrides}" if self.overrides else ""))

    def key(self) -> tuple[str, ...]:
        return (self.config, self.model, self.topology, self.mesh, self.variant, self.overrides)


def shard_gib(tree: Any, shardings: Any) -> float:
    """GiB one device holds of ``tree`` (``ShapeDtypeStruct`` s) under ``shardings``."""
    leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
    return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize for a, s in leaves) / GIB


def roofline(flops: float, accessed: float, sent: float, chip: Chip) -> dict[str, Any]:
    """Seconds per step at the chip's peaks for each resource, their max and its name."""
    times = {"compute": flops / (chip.tflops * 1e12), "hbm": accessed / (chip.hbm_gbps * 1e9),
             "ici": sent / (chip.ici_gbps * 1e9)}
    bound = max(times, key=times.get)
    return {**{f"t_{k}_s": v for k, v in times.items()}, "est_step_s": times[bound],
            "bound": bound}


def _oom_gib(message: str) -> dict[str, float]:
    """What the TPU compiler's out-of-memory message says a program needs (GiB): ``total``
    ("Used 120.5G of 95.74G hbm") or ``temp`` ("HLO temporaries (263.55G) exceeds ...")."""
    unit = {"K": 2 ** -20, "M": 2 ** -10, "G": 1.0, "T": 2 ** 10}
    for key, pattern in (("total", r"Used ([\d.]+)([KMGT]) of"),
                         ("temp", r"temporaries \(([\d.]+)([KMGT])\)")):
        m = re.search(pattern, message)
        if m:
            return {key: float(m.group(1)) * unit[m.group(2)]}
    return {}


def measure(case: Case, hlo_dir: Optional[str] = None) -> dict[str, Any]:
    """The row of ``case`` (see the module docstring)."""
    config = case.experiment_config()
    chip = CHIPS[case.topology.split(":")[0]]
    s = train_step.Step(config, train_step.aot_devices(case.topology))
    data, model = s.mesh.devices.shape
    state = s.abstract_state
    row: dict[str, Any] = {
        **dataclasses.asdict(case), "chip": chip.name, "chips": data * model,
        "data": data, "model_axis": model, "batch": config.train.batch_size,
        "batch_per_chip": config.train.batch_size // data, "num_steps": config.train.num_steps,
        "dtype": config.net.dtype, "conv": s.config.net.conv, "hbm": chip.hbm_gib,
        "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(state.params))),
        "params_gib": shard_gib(state.params, s.state_shardings.params),
        "ema_gib": shard_gib(state.ema_params, s.state_shardings.ema_params),
        "opt_gib": shard_gib(state.opt_state, s.state_shardings.opt_state),
        "command": case.command()}
    start = time.perf_counter()
    try:
        compiled = s.fn.lower(s.abstract_state, s.abstract_batch).compile()
    except Exception as e:  # XLA's out-of-HBM (RESOURCE_EXHAUSTED) is a result, not a crash
        message = str(e)
        if "hbm" not in message.lower() and "RESOURCE_EXHAUSTED" not in message:
            raise
        row |= {"fits": False, **_oom_gib(message), "error": message[:600],
                "compile_s": time.perf_counter() - start}
        return row
    row["compile_s"] = time.perf_counter() - start
    mem = compiled.memory_analysis()
    row |= {"args": mem.argument_size_in_bytes / GIB, "out": mem.output_size_in_bytes / GIB,
            "alias": mem.alias_size_in_bytes / GIB, "temp": mem.temp_size_in_bytes / GIB,
            "code": mem.generated_code_size_in_bytes / GIB}
    row["total"] = row["args"] + row["out"] - row["alias"] + row["temp"] + row["code"]
    row["fits"] = row["total"] <= chip.hbm_gib
    cost = train_step._cost(compiled)
    row["tflop"] = cost.get("flops", float("nan")) / 1e12
    row["gib_accessed"] = cost.get("bytes accessed", float("nan")) / GIB
    hlo = compiled.as_text()
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        name = "_".join(case.key()).replace(":", "-")
        with gzip.open(os.path.join(hlo_dir, name + ".hlo.gz"), "wt") as f:
            f.write(hlo)
    row["collectives"] = collectives(hlo, (data, model))
    row["ici_gib"] = sum(c["ici_bytes"] for c in row["collectives"]) / GIB
    row["traffic_gib"] = traffic(hlo)
    row |= roofline(row["tflop"] * 1e12, row["gib_accessed"] * GIB, row["ici_gib"] * GIB, chip)
    row["chip_hours"] = row["chips"] * row["est_step_s"] * row["num_steps"] / 3600
    return row


def cases(configs: Iterable[str], models: Iterable[str], topologies: Iterable[str],
          meshes: Iterable[str], variant: str = "", overrides: str = "") -> list[Case]:
    """Every combination whose mesh divides the slice and whose batch the data axis."""
    out = []
    for config in configs:
        batch = importlib.import_module(f"experiments.{config}").get_config(
            variant).train.batch_size
        for topology in topologies:
            devices = int(np.prod([int(v) for v in topology.split(":")[1].split("x")]))
            for mesh in meshes:
                m = 1 if mesh == "zero" else int(mesh)
                if devices % m or batch % (devices // m):
                    continue
                out.extend(Case(config, model, topology, mesh, variant, overrides)
                           for model in models)
    return out


# ---------------------------------------------------------------- the table


def table(rows: list[dict[str, Any]], compact: bool = False) -> str:
    """Markdown: one line per row, with the NFDM/VDM ratio of per-chip memory; ``compact``:
    only the planning columns (README.md)."""
    def name(r: dict[str, Any]) -> str:
        return (r["config"] + (f":{r['variant']}" if r.get("variant") else "")
                + (f" {r['overrides']}" if r.get("overrides") else ""))

    vdm = {(name(r), r["topology"], r["mesh"]): r for r in rows if r["model"] == "vdm"}
    if compact:
        lines = ["| config | model | slice (chips) | mesh | batch/chip | memory/chip GiB / HBM "
                 "| est. step s | chip-hours |", "|" + "---|" * 8]
    else:
        lines = ["| config | model | slice | chips | mesh | batch/chip | params+EMA+opt GiB | "
                 "temp GiB | total GiB / HBM | ×VDM | TFLOP/chip | ICI GiB | est. step s "
                 "| bound | chip-hours |", "|" + "---|" * 15]
    for r in rows:
        ref = vdm.get((name(r), r["topology"], r["mesh"]))
        ratio = (f"{r['total'] / ref['total']:.2f}" if ref and r["model"] != "vdm"
                 and r.get("total") and ref.get("total") else "")
        mesh = "zero" if r["mesh"] == "zero" else f"{r['data']}×{r['model_axis']}"
        state = r["params_gib"] + r["ema_gib"] + r["opt_gib"]
        total = (f"{r['total']:.1f} / {r['hbm']:.0f}" if r.get("total")
                 else f"> {r['temp']:.0f} / {r['hbm']:.0f}" if r.get("temp") else "?")
        if not r["fits"]:
            total = f"**{total}** (does not fit)"
        f = lambda k, p: f"{r[k]:.{p}f}" if k in r else "–"  # noqa: E731
        if compact:
            lines.append(f"| {name(r)} | {r['model']} | {r['topology']} ({r['chips']}) | {mesh} "
                         f"| {r['batch_per_chip']} | {total} | {f('est_step_s', 3)} "
                         f"| {f('chip_hours', 0)} |")
            continue
        lines.append(f"| {name(r)} | {r['model']} | {r['topology']} | {r['chips']} | {mesh} "
                     f"| {r['batch_per_chip']} | {state:.2f} | {f('temp', 1)} | {total} | {ratio} "
                     f"| {f('tflop', 1)} | {f('ici_gib', 2)} | {f('est_step_s', 3)} "
                     f"| {r.get('bound', '–')} | {f('chip_hours', 0)} |")
    return "\n".join(lines)


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(row.get(k, "") for k in ("config", "model", "topology", "mesh", "variant",
                                          "overrides"))


def read_rows(path: str) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a case measured twice keeps its last row."""
    rows: dict[tuple, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[_key(r)] = r
    return list(rows.values())


def _define_flags() -> None:
    """The CLI's flags, defined only when run as a script (see benchmarks.train_step)."""
    global _CONFIGS, _VARIANT, _OVERRIDES, _MODELS, _TOPOLOGIES, _MESHES, _JSON, _HLO_DIR
    global _TABLE, _COMPACT, _REDO
    _CONFIGS = flags.DEFINE_list("configs", list(CONFIGS), "experiments/<name>.py configs.")
    _VARIANT = flags.DEFINE_string("variant", "", "Config variants, e.g. tiny (tests).")
    _OVERRIDES = flags.DEFINE_string("overrides", "", "Config fields, e.g. net.remat=False.")
    _MODELS = flags.DEFINE_list("models", ["nfdm", "vdm"], "nfdm and/or vdm (the :vdm variant).")
    _TOPOLOGIES = flags.DEFINE_list("topologies", list(TOPOLOGIES), "TPU slices, e.g. v5p:2x2x4.")
    _MESHES = flags.DEFINE_list("meshes", ["1", "2", "4", "zero"],
                                "mesh.model values, or zero (mesh.model=1, state_over_data).")
    _JSON = flags.DEFINE_string("json", "benchmarks/results/tpu_scale.jsonl",
                                "Append rows here; cases already in it are skipped.")
    _HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Keep each compiled HLO here (gzip).")
    _TABLE = flags.DEFINE_string("table", None, "Only print the table of these rows.")
    _COMPACT = flags.DEFINE_bool("compact", False, "--table: the planning columns only.")
    _REDO = flags.DEFINE_bool("redo", False, "Measure cases already in --json again.")


def main(_) -> None:
    logging.get_absl_handler().addFilter(runtime.quiet_backend_probe)
    runtime.enable_compilation_cache()  # a rerun of a row (e.g. after --redo) loads it
    if _TABLE.value:
        print(table(read_rows(_TABLE.value), _COMPACT.value))
        return
    done = ({_key(r) for r in read_rows(_JSON.value)}
            if os.path.exists(_JSON.value) and not _REDO.value else set())
    rows = []
    for case in cases(_CONFIGS.value, _MODELS.value, _TOPOLOGIES.value, _MESHES.value,
                      _VARIANT.value, _OVERRIDES.value):
        if case.key() in done:
            continue
        logging.info("compiling %s", case.command())
        row = measure(case, _HLO_DIR.value)
        rows.append(row)
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    if rows:
        print(table(rows))


if __name__ == "__main__":
    _define_flags()
    app.run(main)

"""The scale-out planner (benchmarks/scale.py) and what it checks in the sharded step: HLO
parsing, the collectives of the compiled 8-device step per mesh, and the ZeRO-style option
(``mesh.state_over_data``) training exactly like the replicated state."""
import importlib.util

import jax
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks import scale, train_step
from experiments import imagenet64
from nfdm_jax.train import experiment, sharding

HLO = "\n".join([  # excerpts of compiled TPU modules, one line per instruction
    "  %all-reduce.1 = (f32[16]{0:T(128)}, f32[4,4]{1,0:T(4,128)}) all-reduce(%a, %b), "
    "channel_id=1, replica_groups={{0,2},{1,3}}, use_global_device_ids=true, to_apply=%add",
    "  %get-tuple-element.2 = f32[16]{0} get-tuple-element(%all-reduce.1), index=0",
    "  %all-gather-start.3 = (bf16[8]{0}, bf16[16]{0}) all-gather-start(%c), channel_id=2, "
    "replica_groups=[2,2]<=[4], dimensions={0}",
    "  %all-gather-done.4 = bf16[16]{0} all-gather-done(%all-gather-start.3)",
    "  ROOT %reduce-scatter.5 = f32[2]{0} reduce-scatter(%d), channel_id=3, "
    "replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0','axis_1'}, dimensions={0}",
])


def test_shape_bytes_and_replica_group_spellings():
    assert scale.shape_bytes("(f32[16]{0:T(128)}, bf16[4,4]{1,0:T(4,128)})") == 64 + 32
    assert scale.shape_bytes("pred[]") == 1
    assert scale.replica_groups("replica_groups={{0,2},{1,3}}, x", 4) == [[0, 2], [1, 3]]
    assert scale.replica_groups("replica_groups={}, x", 4) == [[0, 1, 2, 3]]
    assert scale.replica_groups("replica_groups=[2,2]<=[4]", 4) == [[0, 1], [2, 3]]
    assert scale.replica_groups("replica_groups=[2,2]<=[2,2]T(1,0)", 4) == [[0, 2], [1, 3]]
    mesh = "replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}"
    assert scale.replica_groups(mesh, 4) == [[0, 2], [1, 3]]
    mesh = "replica_groups=mesh['a'=1,'b'=2,'c'=2], device_ids=([2,2]T(1,0)) {'b'}, x"
    assert scale.replica_groups(mesh, 4) == [[0, 1], [2, 3]]
    assert scale.replica_groups("source_target_pairs={{0,1},{1,0}}", 2) == [[0, 1], [1, 0]]
    # On a (data=2, model=2) mesh device p is (data, model) = divmod(p, 2).
    assert scale.mesh_axis([[0, 2], [1, 3]], (2, 2)) == "data"
    assert scale.mesh_axis([[0, 1], [2, 3]], (2, 2)) == "model"
    assert scale.mesh_axis([[0, 1, 2, 3]], (2, 2)) == "data+model"


def test_collectives_of_a_module_text():
    found = {(c["kind"], c["axis"]): c for c in scale.collectives(HLO, (2, 2))}
    assert set(found) == {("all-reduce", "data"), ("all-gather", "model"),
                          ("reduce-scatter", "data+model")}
    ar, ag = found[("all-reduce", "data")], found[("all-gather", "model")]
    rs = found[("reduce-scatter", "data+model")]
    assert (ar["count"], ar["bytes"], ar["ici_bytes"]) == (1, 128, 128.0)   # 2·(n−1)/n, n = 2
    assert (ag["count"], ag["bytes"], ag["ici_bytes"]) == (1, 32, 16.0)     # the -done's result
    assert (rs["bytes"], rs["ici_bytes"]) == (8, 24.0)                      # (n − 1)·result, n = 4


TRAFFIC_HLO = """HloModule m
%fused_computation.1 (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %e = f32[8]{0} exponential(%p)
}
%body.2 (t: (f32[8])) -> (f32[8]) {
  %t = (f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%t), index=0
  %cs = (f32[8]{0}, f32[8]{0}) copy-start(%x)
  %cd = f32[8]{0} copy-done(%cs)
  %f = f32[8]{0} fusion(%cd), calls=%fused_computation.1, metadata={op_name="jvp(ForwardUNet)/m"}
  %g = bf16[8]{0} convert(%f), metadata={op_name="jit(s)/transpose(jvp(UNet))/convert"}
  ROOT %r = (f32[8]{0}) tuple(%f)
}
ENTRY %main.3 (a: f32[8], /*index=1*/b: f32[4]) -> (f32[8]) {
  %a = f32[8]{0} parameter(0)
  %b = f32[4]{0} parameter(1)
  %s = f32[4]{0} add(%b, %b)
  ROOT %w = (f32[8]{0}) while(%a), condition=%cond.4, body=%body.2
}"""


def test_traffic_counts_program_instructions_by_network_and_pass():
    """Operands plus result of each instruction outside fusion bodies; the while body once;
    an asynchronous copy once; the network and pass read from ``op_name``."""
    assert scale.traffic(TRAFFIC_HLO) == {
        "rest": (48 + 64) / scale.GIB,               # add: 2 operands + result; a copy
        "ForwardUNet/fwd": 64 / scale.GIB,           # fusion: its operand and result
        "UNet/bwd": (32 + 16) / scale.GIB}           # convert f32 → bf16


def test_roofline_names_the_slowest_resource():
    chip = scale.CHIPS["v5p"]
    est = scale.roofline(459e12, 2765e9 * 2, 0.0, chip)
    assert est["bound"] == "hbm" and est["est_step_s"] == pytest.approx(2.0)
    assert est["t_compute_s"] == pytest.approx(1.0) and est["t_ici_s"] == 0.0


def test_cases_keep_meshes_that_divide_the_slice_and_the_batch():
    found = scale.cases(["imagenet64"], ["nfdm"], ["v5p:2x2x1", "v4:4x4x4"], ["1", "4", "zero"])
    assert [(c.topology, c.mesh) for c in found] == [
        ("v5p:2x2x1", "1"), ("v5p:2x2x1", "4"), ("v5p:2x2x1", "zero"),
        ("v4:4x4x4", "1"), ("v4:4x4x4", "4"), ("v4:4x4x4", "zero")]
    config = found[-1].experiment_config()
    assert (config.mesh.model, config.mesh.state_over_data) == (1, True)
    assert "--meshes=zero" in found[-1].command()


def _config(module, model_axis=1, zero=False):
    c = module.get_config("tiny")
    c.unlock()
    c.mesh.model, c.mesh.state_over_data, c.mesh.shard_min_size = model_axis, zero, 0
    c.lock()
    return c


def _compiled_collectives(config):
    s = train_step.Step(config)  # all 8 fake CPU devices (conftest)
    hlo = s.fn.lower(s.abstract_state, s.abstract_batch).compile().as_text()
    params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(s.abstract_state.params))
    return scale.collectives(hlo, s.mesh.devices.shape), params


def _assert_only_gradient_and_metric_all_reduces(found, params):
    """All-reduces over 'data' only: no all-gather of activations or parameters. XLA:CPU
    reduces each use's partial gradient of a parameter on its own (the forward net's, used
    several times under jvp, up to 1.9× the parameters' bytes) where XLA:TPU adds them
    first and reduces once (1.003×, benchmarks/README.md), hence the CPU bound of 2×."""
    assert [(c["kind"], c["axis"]) for c in found] == [("all-reduce", "data")]
    assert params <= found[0]["bytes"] <= 2 * params


def test_data_parallel_step_reduces_only_gradients_and_metrics(toy_config):
    """The 2-D NFDM step on 8 devices, mesh.model = 1 (the U-Net's: the slow test below)."""
    _assert_only_gradient_and_metric_all_reduces(*_compiled_collectives(toy_config()))


@pytest.mark.slow  # the tiny U-Net NFDM step's 8-device compile: 2-5 min on 2 shared cores
def test_imagenet64_data_parallel_step_reduces_only_gradients_and_metrics():
    """The ImageNet-64 code path's tiny U-Net NFDM on 8 devices, mesh.model = 1."""
    _assert_only_gradient_and_metric_all_reduces(
        *_compiled_collectives(_config(imagenet64)))


def test_zero_state_is_sharded_over_data_and_parameters_are_not(toy_config):
    shardings = experiment.setup(toy_config(**{"mesh.state_over_data": True}),
                                 jax.devices()).state_shardings
    assert all(s.spec == P() for s in jax.tree.leaves(shardings.params))
    for tree in (shardings.ema_params, shardings.opt_state):
        assert any("data" in s.spec for s in jax.tree.leaves(tree))
    # 'model' takes the largest dimension it divides, 'data' the largest other one.
    assert sharding.param_spec((8, 6), 2, 0, 3) == P("model", "data")
    assert sharding.param_spec((8, 6), 1, 0, 4) == P("data", None)
    assert sharding.param_spec((5,), 1, 0, 4) == P()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu")
@pytest.mark.slow  # one TPU compile of the tiny U-Net: 2-8 min on 2 shared cores
def test_tiny_row_on_a_v5p_slice():
    """XLA:TPU's data-parallel step: one all-reduce of the gradients (the parameters' bytes,
    within 1 %: the metrics are scalars), memory and a roofline time; traced with XLA
    convolutions, not the CPU host's im2col matmuls (``train_step.for_platform``)."""
    row = scale.measure(scale.Case("imagenet64", "nfdm", "v5p:2x2x1", "1", variant="tiny"))
    assert row["conv"] == "xla"
    assert row["chips"] == 4 and row["batch_per_chip"] == 2 and row["fits"]
    assert row["total"] > row["temp"] > 0
    (reduce,) = row["collectives"]
    assert (reduce["kind"], reduce["axis"]) == ("all-reduce", "data")
    assert row["params"] * 4 <= reduce["bytes"] <= row["params"] * 4 * 1.01
    assert row["est_step_s"] > 0 and row["chip_hours"] > 0
    assert {"UNet/fwd", "UNet/bwd", "ForwardUNet/fwd", "ForwardUNet/bwd"} <= set(row["traffic_gib"])


def test_table_shows_the_memory_ratio_and_rows_that_do_not_fit():
    base = {"config": "imagenet64", "topology": "v5p:2x2x4", "mesh": "1", "data": 16,
            "model_axis": 1, "chips": 16, "batch_per_chip": 128, "hbm": 95.0, "params_gib": 1.0,
            "ema_gib": 1.0, "opt_gib": 2.0}
    rows = [base | {"model": "nfdm", "fits": True, "total": 42.0, "temp": 36.0,
                    "est_step_s": 1.5, "chip_hours": 100.0},
            base | {"model": "vdm", "fits": True, "total": 20.0, "temp": 14.0},
            base | {"model": "nfdm", "topology": "v5p:2x2x1", "fits": False, "temp": 263.55}]
    lines = scale.table(rows).splitlines()
    assert "| 2.10 |" in lines[2] and "42.0 / 95" in lines[2]
    assert "**> 264 / 95** (does not fit)" in lines[4]
    compact = scale.table(rows, compact=True).splitlines()
    assert compact[2].startswith("| imagenet64 | nfdm | v5p:2x2x4 (16) | 16×1 | 128 | 42.0 / 95")

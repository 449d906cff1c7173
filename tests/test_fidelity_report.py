"""The fidelity report's bookkeeping: merging invocations and the tables it writes."""
from __future__ import annotations

import json

from experiments import fidelity_report as fr


def _stats(mean: float, se: float) -> dict:
    return {"mean": mean, "se": se, "per_seed": [mean - se, mean + se]}


def _model(nelbo: float, seconds: float = 10.0) -> dict:
    return {"nelbo_minus_h": _stats(nelbo, 0.01), "ode_nll_minus_h": _stats(nelbo + 0.02, 0.01),
            "nelbo_estimator_std": 1.0, "terms": {"diff": 1.0, "rec": -1.0, "prior": 0.0},
            "final_train_loss": _stats(1.0, 0.1), "train_seconds": seconds}


def _likelihood(steps: int, **models: float) -> dict:
    return {str(steps): {"eight_gaussians": {"models": {k: _model(v) for k, v in models.items()}}}}


def test_merge_adds_models_and_step_counts_and_keeps_the_rest() -> None:
    old = {"likelihood": _likelihood(3000, vp=0.03, nfdm=0.02), "digits": {"a": {"bpd": 2.0}}}
    new = {"likelihood": {**_likelihood(3000, vdm_learned=0.04), **_likelihood(12000, nfdm=0.01)}}
    merged = fr.merge_results(old, new)
    assert set(merged["likelihood"]["3000"]["eight_gaussians"]["models"]) == {
        "vp", "nfdm", "vdm_learned"}
    assert merged["likelihood"]["12000"]["eight_gaussians"]["models"]["nfdm"][
        "nelbo_minus_h"]["mean"] == 0.01
    assert merged["digits"] == {"a": {"bpd": 2.0}}
    assert "vdm_learned" not in old["likelihood"]["3000"]["eight_gaussians"]["models"]


def test_merge_replaces_a_rerun_model_but_none_keeps_the_recorded_value() -> None:
    old = {"likelihood": _likelihood(3000, nfdm=0.5),
           "digits": {"run": {"bpd": 2.0, "train_seconds": 300.0}}}
    new = {"likelihood": _likelihood(3000, nfdm=0.1),
           "digits": {"run": {"bpd": 1.9, "train_seconds": None}}}
    merged = fr.merge_results(old, new)
    assert merged["likelihood"]["3000"]["eight_gaussians"]["models"]["nfdm"][
        "nelbo_minus_h"]["mean"] == 0.1
    assert merged["digits"]["run"] == {"bpd": 1.9, "train_seconds": 300.0}


def test_paired_difference_uses_per_seed_values() -> None:
    a = {"mean": 2.0, "se": 1.0, "per_seed": [1.0, 2.0, 3.0]}
    b = {"mean": 1.0, "se": 1.0, "per_seed": [0.5, 1.0, 1.5]}
    # differences 0.5, 1.0, 1.5: mean 1, std 0.5, s.e. 0.5 / √3.
    assert fr._diff(a, b) == "+1.000 ± 0.289"


def test_markdown_tables_per_step_count_with_differences_to_nfdm(tmp_path) -> None:
    res = {"settings": {}, "command": "c", "commands": ["c"],
           "likelihood": {**_likelihood(12000, nfdm=0.01, vp=0.05),
                          **_likelihood(3000, vp=0.03, nfdm=0.02, nfdm_frozen=0.07)}}
    md = fr.markdown(res)
    assert md.index("at 3000 steps") < md.index("at 12000 steps")
    # NFDM − VP at 3000 steps, paired by seed: per-seed differences −0.01 ± 0.
    assert "| eight_gaussians | VP (vdm) | -0.010 ± 0.000 | -0.010 ± 0.000 |" in md
    assert "| eight_gaussians | NFDM :frozen | -0.050 ± 0.000 |" in md
    assert "| eight_gaussians | VP (vdm) | -0.040 ± 0.000 |" in md
    (tmp_path / "results.json").write_text(json.dumps({"commands": ["old"]}))
    fr.save(res, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["commands"] == ["c", "old"]
    assert (tmp_path / "results.md").read_text() == md.replace("`c`.", "`c`; `old`.")


def test_digits_tables_pair_by_seed_and_mark_single_seeds() -> None:
    def run(variant: str, steps: int, seed: int, bpd: float) -> dict:
        return {"variant": variant, "steps": steps, "seed": seed, "bpd": bpd,
                "bpd_stderr": 0.04, "train_seconds": 100.0}
    runs = {f"{v}_{n}_{i}": run(v, n, i, b) for v, n, i, b in [
        ("nfdm", 12000, 0, 1.79), ("nfdm", 12000, 1, 1.80), ("vdm", 12000, 0, 1.75),
        ("vdm", 12000, 1, 1.79), ("nfdm", 24000, 0, 1.70), ("vdm", 24000, 0, 1.74)]}
    md = fr.markdown({"settings": {}, "commands": ["c"], "digits": runs})
    assert "| vdm | 12000 | 1.770 ± 0.020 | 1.750 ± 0.040; 1.790 ± 0.040 | 100 |" in md
    assert "| nfdm | 24000 | 1.700 (1 seed) |" in md
    # NFDM − VDM per seed at 12 000 steps: +0.04, +0.01.
    assert "| 12000 | vdm | +0.025 ± 0.015 | +0.040; +0.010 |" in md
    assert "| 24000 | vdm | -0.040 (1 seed) | -0.040 |" in md


def test_conditioning_is_unit_at_the_untrained_process_and_moves_with_the_forward_net() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments import toy2d
    from nfdm_jax.models import Model

    mean, std = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    x = jnp.asarray(mean + std * np.random.default_rng(0).standard_normal((4096, 2)), jnp.float32)
    ts = np.array([0.2, 0.5, 0.9])
    stats = {}
    # NFDM with a learned σ last: its network is inflated below.
    for variant in ("tiny,frozen", "tiny,learned_sigma"):
        c = toy2d.get_config(variant)
        c.unlock()
        c.model.data_mean, c.model.data_std = tuple(mean), tuple(std)
        model = Model(c, (2,))
        params = model.init(jax.random.key(0), {"x": x[:8]})
        stats[variant] = fr.conditioning_stats(model, params, x, ts, jax.random.key(1))
        # The forward network's zero output layer: NFDM starts at its untrained process,
        # where the edm scalings whiten the input and the target of Gaussian data.
        np.testing.assert_allclose(stats[variant]["sigma"], stats[variant]["sigma_base"],
                                   rtol=1e-6)
        np.testing.assert_allclose(stats[variant]["input_std"], 1.0, atol=0.05)
        np.testing.assert_allclose(stats[variant]["target_std"], 1.0, atol=0.05)
    # A forward network that inflates σ (l̄ = 4 through its output bias: log σ up by
    # 4 t (1 − t)) leaves the scalings behind: σ above the base, the target no longer unit.
    bias = params["forward"]["mlp"]["out"]["bias"]
    inflated = {**params, "forward": {"mlp": {**params["forward"]["mlp"], "out": {
        **params["forward"]["mlp"]["out"], "bias": bias.at[2:].set(4.0)}}}}
    moved = fr.conditioning_stats(model, inflated, x, ts, jax.random.key(1))
    np.testing.assert_array_less(np.asarray(moved["sigma_base"]) * 1.4, moved["sigma"])
    assert max(moved["target_std"]) > 1.5


def test_the_stored_results_render_to_the_committed_tables() -> None:
    """results.md is a function of results.json, historical rows (measured with knobs since
    removed, reproducible at ffd2892) included."""
    import pathlib

    out = pathlib.Path(__file__).resolve().parents[1] / "reports" / "fidelity"
    res = json.loads((out / "results.json").read_text())
    assert fr.markdown(res) == (out / "results.md").read_text()

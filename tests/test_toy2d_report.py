"""Tests of the 2-D report: its measurements on known cases, and a --quick smoke run."""
from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import report_lib as lib
from experiments import toy2d_report

FIGURES = ("trajectories.png", "samples_vs_nfe.png", "energy_vs_nfe.png",
           "bridge_no_obstacle.png", "bridge_obstacle.png")


@pytest.mark.parametrize("name", sorted(lib.DENSITIES))
def test_mixture_density_integrates_to_one(name: str) -> None:
    grid = np.linspace(-6.0, 6.0, 601)
    xx, yy = np.meshgrid(grid, grid)
    points = np.stack([xx.ravel(), yy.ravel()], -1)
    mass = np.exp(lib.DENSITIES[name].log_prob(points)).sum() * (grid[1] - grid[0]) ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_ring_density_is_the_library_samplers() -> None:
    """−log p of the library's ring samples and of the mixture's own samples agree."""
    rng = np.random.default_rng(0)
    ring = lib.DENSITIES["eight_gaussians"]
    ours = lib.mean_se(-ring.log_prob(ring.sample(rng, 50_000)))
    theirs = lib.mean_se(-ring.log_prob(lib.sample_density("eight_gaussians", rng, 50_000)))
    assert abs(ours.mean - theirs.mean) < 4 * math.hypot(ours.se, theirs.se)
    means = lib.sample_density("eight_gaussians", rng, 50_000).mean(0)
    np.testing.assert_allclose(means, 0.0, atol=0.05)


def test_straightness_of_known_paths() -> None:
    """Constant velocity: S = 0. v = 2t·c from t = 1 to 0: z_1 − z_0 = c and
    S = ‖c‖² ∫ (2t − 1)² dt = ‖c‖² / 3, relative 1/3."""
    c = jnp.asarray([[1.5, -0.5]])
    z1 = jnp.zeros((4, 2))
    straight = lib.straightness(lambda z, t: jnp.broadcast_to(c, z.shape), z1)
    assert straight.s == pytest.approx(0.0, abs=1e-8)
    curved = lib.straightness(lambda z, t: 2.0 * t[:, None] * c, z1)
    assert curved.s == pytest.approx(2.5 / 3, rel=1e-3)
    assert curved.relative == pytest.approx(1 / 3, rel=1e-3)


def test_entered_disc() -> None:
    t = np.linspace(0.0, 1.0, 11)[:, None]
    through = np.concatenate([-2 + 4 * t, 0 * t], -1)         # along the x-axis
    around = np.concatenate([-2 + 4 * t, 0 * t + 1.5], -1)    # 1.5 above the centre
    zs = np.stack([through, around], axis=1)                  # [T, 2 paths, 2]
    assert lib.entered_disc(zs, (0.0, 0.0), 1.0) == 0.5


def _leaves(tree: object, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


@pytest.mark.slow
def test_quick_report_writes_every_output(tmp_path) -> None:
    """``--quick`` end to end (minutes on a shared 2-core CPU: compilation dominates)."""
    out = str(tmp_path / "toy2d")
    toy2d_report.main([f"--out={out}", "--quick"])
    for name in FIGURES + ("results.md", "results.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for density in lib.DENSITIES:
        r = results["likelihood"][density]
        for field in ("true_entropy", "vp_nelbo", "nfdm_nelbo", "vp_ode_nll", "nfdm_ode_nll",
                      "nfdm_ot_ode_nll", "true_entropy_ode_points"):
            assert set(r[field]) >= {"mean", "se"}, (density, field)
    for kind in toy2d_report.MODELS:
        assert set(results["straightness"][kind]) == {"s", "relative"}
        nfes = results["sample_quality"]["energy_distance"][kind]
        assert set(nfes) == {f"nfe_{n}" for n in toy2d_report.QUICK.nfes}
    for kind in toy2d_report.BRIDGES:
        assert {"forward_entered_disc", "sde_entered_disc", "ode_entered_disc",
                "sde_endpoint_energy_distance"} <= set(results["bridge"][kind])
    numbers = [(path, v) for path, v in _leaves(results) if not isinstance(v, str)]
    assert numbers
    for path, value in numbers:
        assert isinstance(value, (int, float)) and math.isfinite(value), path

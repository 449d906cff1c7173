"""The few-step report's pure parts: the mode fraction, the edits and the tables."""
import numpy as np

from experiments import few_step_report as fs
from experiments import report_lib as lib


def test_on_mode_fraction_counts_samples_near_a_centre():
    means = lib.DENSITIES["eight_gaussians"].means
    far = np.full((len(means), 2), 50.0)
    assert fs.on_mode_fraction(np.concatenate([means, far])) == 0.5


def test_parse_edits_reads_json_values_and_bare_strings():
    edits = fs.parse_edits(["nfdm_ot:model.curvature_weight=0.01",
                            "nfdm_ot:model.forward_sigma=base", "vp:train.num_steps=10"])
    assert edits == {"nfdm_ot": {"model.curvature_weight": 0.01, "model.forward_sigma": "base"},
                     "vp": {"train.num_steps": 10}}


def test_render_picks_each_nfes_best_setting():
    def stats(m):
        return {"mean": m, "se": 0.001}

    row = {"model": "m", "tag": "t", "steps": 6000, "seeds": 3, "nelbo": stats(2.9),
           "train_seconds": 10.0,
           "energy": {"euler/rho=1/2": stats(0.5), "euler/rho=0.5/2": stats(0.2),
                      "heun/rho=1/2": stats(0.3)}}
    table = fs.render([row], [2])
    assert "| m | t | 6000 | 3 | 0.5000 ± 0.0010 | 2.9000 ± 0.0010 | 10 |" in table
    assert "0.2000 ± 0.0010 (euler ρ=0.5)" in table

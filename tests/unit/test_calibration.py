"""Calibration: recovers known logistic parameters, stays monotone, reports the gap, round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lenscope.client.ranking.calibration import (
    CalibrationError,
    CalibrationSet,
    IsotonicParams,
    PlattParams,
    fit_calibration_set,
    fit_isotonic,
    fit_logistic,
    fit_pair,
    fit_platt,
    gap_report,
    load_calibration,
    save_calibration,
    sigmoid,
)


def two_gaussians(mu_pos: float, mu_neg: float, sd: float, n: int, seed: int):
    """Equal-variance Gaussians with equal priors: the exact posterior is logistic in the score,
    slope = (mu_pos - mu_neg) / sd^2, intercept = (mu_neg^2 - mu_pos^2) / (2 sd^2)."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mu_pos, sd, n), rng.normal(mu_neg, sd, n)]
    labels = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
    slope = (mu_pos - mu_neg) / sd**2
    intercept = (mu_neg**2 - mu_pos**2) / (2 * sd**2)
    return scores, labels, slope, intercept


GRID = np.linspace(-1.0, 1.0, 2001)


@pytest.mark.parametrize(
    "mu_pos, mu_neg, sd",
    [(0.30, 0.20, 0.05), (0.85, 0.60, 0.10)],  # a text->image-like and an image->image-like pair
)
def test_platt_recovers_known_logistic(mu_pos, mu_neg, sd):
    scores, labels, slope, intercept = two_gaussians(mu_pos, mu_neg, sd, 10_000, seed=1)
    p = fit_platt(scores, labels)
    # n = 20k: the sampling error of the slope is ~2%; 6% leaves room without hiding a bias.
    assert p.slope == pytest.approx(slope, rel=0.06)
    # The decision boundary (P = 0.5) is the midpoint of the two means.
    assert -p.intercept / p.slope == pytest.approx((mu_pos + mu_neg) / 2, abs=0.005)
    true_prob = sigmoid(slope * GRID + intercept)
    assert np.max(np.abs(p.apply(GRID) - true_prob)) < 0.03


def test_platt_standardisation_makes_fit_scale_free():
    scores, labels, _, _ = two_gaussians(0.30, 0.20, 0.05, 2_000, seed=2)
    a = fit_platt(scores, labels)
    b = fit_platt(scores * 10.0, labels)
    assert b.slope == pytest.approx(a.slope / 10.0, rel=1e-6)
    assert b.intercept == pytest.approx(a.intercept, rel=1e-6)


def test_platt_monotone_and_bounded_on_grid():
    scores, labels, _, _ = two_gaussians(0.30, 0.20, 0.05, 5_000, seed=3)
    probs = fit_platt(scores, labels).apply(GRID)
    assert np.all(np.diff(probs) >= 0)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert probs[0] < 0.01 and probs[-1] > 0.99


def test_platt_targets_keep_separable_data_finite():
    scores = np.r_[np.linspace(0.5, 0.6, 50), np.linspace(0.1, 0.2, 50)]
    labels = np.r_[np.ones(50), np.zeros(50)]
    p = fit_platt(scores, labels)
    assert np.isfinite(p.slope) and np.isfinite(p.intercept)
    probs = p.apply(np.array([0.0, 1.0]))
    # Smoothed targets cap confidence: 1 - t+ = 1/52, so no fitted point reaches exactly 0 or 1.
    assert 0.0 < probs[0] < 0.05 and 0.95 < probs[1] < 1.0


def test_platt_anticorrelated_data_does_not_invert_order():
    scores, labels, _, _ = two_gaussians(0.20, 0.30, 0.05, 1_000, seed=4)
    p = fit_platt(scores, labels)
    assert p.slope == 0.0
    # Intercept-only fit on smoothed targets: the (smoothed) base rate, ~0.5 here.
    assert p.apply(np.array([0.0]))[0] == pytest.approx(0.5, abs=1e-3)


def test_isotonic_monotone_and_close_to_truth():
    scores, labels, slope, intercept = two_gaussians(0.30, 0.20, 0.05, 10_000, seed=5)
    iso = fit_isotonic(scores, labels)
    probs = iso.apply(GRID)
    assert np.all(np.diff(probs) >= 0)
    assert np.all(np.diff(iso.knots_x) > 0)
    inner = (GRID > 0.15) & (GRID < 0.35)
    assert np.max(np.abs(probs[inner] - sigmoid(slope * GRID[inner] + intercept))) < 0.1


def test_isotonic_pav_matches_hand_computed():
    # labels in score order: 0 1 0 1 1 -> PAV pools (1, 0) into 0.5: fit = [0, .5, .5, 1, 1].
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    labels = np.array([0, 1, 0, 1, 1])
    iso = fit_isotonic(scores, labels)
    assert iso.knots_x == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert iso.knots_y == (0.0, 0.5, 0.5, 1.0, 1.0)
    # Linear between knots, constant outside.
    np.testing.assert_allclose(iso.apply(np.array([0.0, 0.15, 0.25, 0.35, 0.9])), [0.0, 0.25, 0.5, 0.75, 1.0])


def test_isotonic_merges_tied_scores():
    scores = np.array([0.2, 0.2, 0.2, 0.7, 0.7])
    labels = np.array([1, 0, 0, 1, 1])
    iso = fit_isotonic(scores, labels)
    assert iso.knots_x == (0.2, 0.7)
    assert iso.knots_y == pytest.approx((1 / 3, 1.0))


def test_fit_logistic_soft_targets_reach_the_penalised_optimum():
    # The objective is mean soft-target log-loss + l2/2 ||w||^2 (b unpenalised): its gradient must
    # vanish at the returned (w, b), whatever solver produced it.
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2_000, 2))
    t = sigmoid(x @ np.array([1.5, -0.7]) + 0.3) * 0.9 + 0.05  # soft targets in (0.05, 0.95)
    for l2 in (0.0, 1e-2):
        w, b = fit_logistic(x, t, l2)
        p = sigmoid(x @ w + b)
        np.testing.assert_allclose(x.T @ (p - t) / len(t) + l2 * w, 0.0, atol=1e-8)
        assert np.mean(p - t) == pytest.approx(0.0, abs=1e-8)
    w0, _ = fit_logistic(x, t, 0.0)
    w1, _ = fit_logistic(x, t, 1e-2)
    assert np.linalg.norm(w1) < np.linalg.norm(w0)  # the penalty shrinks the weights


def test_fit_logistic_without_features_is_the_base_rate():
    t = np.array([1.0, 0.0, 0.0, 0.25])
    w, b = fit_logistic(np.zeros((4, 0)), t, 0.0)
    assert w.shape == (0,)
    assert sigmoid(b) == pytest.approx(t.mean(), abs=1e-12)


def test_shipped_calibration_file_loads_and_applies_its_stored_numbers():
    # Files written before the scikit-learn fitters (same schema) must load and evaluate unchanged.
    path = Path(__file__).resolve().parents[2] / "export" / "weights" / "lenscope-tiny.calibration.json"
    raw = json.loads(path.read_text())
    cs = load_calibration(path)
    assert json.loads(cs.model_dump_json()) == raw
    for pair, cal in raw["pairs"].items():
        prm = cal["params"]
        assert prm["method"] == "platt"
        np.testing.assert_array_equal(cs.apply(pair, GRID), sigmoid(prm["slope"] * GRID + prm["intercept"]))


def test_gap_report_equals_hand_computed():
    matched = np.array([0.30, 0.32, 0.28])
    unmatched = np.array([0.10, 0.20, 0.15, 0.15])
    r = gap_report(matched, unmatched)
    assert r.n_matched == 3 and r.n_unmatched == 4
    assert r.mean_matched == pytest.approx(0.30)
    assert r.mean_unmatched == pytest.approx(0.15)
    assert r.separation == pytest.approx(0.15)
    assert r.std_matched == pytest.approx(np.sqrt((0.0004 + 0.0004) / 3))
    assert gap_report(matched, np.array([])).mean_unmatched is None


def test_fit_pair_counts_and_report():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 0, 0])
    cal = fit_pair("image_image", scores, labels)
    assert (cal.n_pos, cal.n_neg) == (2, 3)
    assert cal.report.mean_matched == pytest.approx(0.85)
    assert cal.report.mean_unmatched == pytest.approx(0.2)


def test_modality_gap_across_pairs():
    cs = fit_calibration_set(
        {
            "image_image": two_gaussians(0.80, 0.55, 0.05, 500, seed=6)[:2],
            "text_image": two_gaussians(0.30, 0.18, 0.03, 500, seed=7)[:2],
        }
    )
    gap = cs.modality_gap()
    assert gap["image_image"] == 0.0
    expected = cs.pairs["image_image"].report.mean_matched - cs.pairs["text_image"].report.mean_matched
    assert gap["text_image"] == pytest.approx(expected)
    assert gap["text_image"] == pytest.approx(0.5, abs=0.01)
    # After calibration the two pairs agree: a text->image cosine of 0.30 is as convincing as an
    # image->image cosine of 0.80, although the raw numbers differ by 0.5.
    assert cs.apply("text_image", np.array([0.30]))[0] == pytest.approx(
        cs.apply("image_image", np.array([0.80]))[0], abs=0.1
    )


def test_save_load_round_trip(tmp_path):
    s1, y1, _, _ = two_gaussians(0.80, 0.55, 0.05, 300, seed=8)
    s2, y2, _, _ = two_gaussians(0.30, 0.18, 0.03, 300, seed=9)
    cs = fit_calibration_set(
        {"image_image": (s1, y1), "text_title": (s2, y2)},
        method={"image_image": "platt", "text_title": "isotonic"},
        model_hash="abc123",
    )
    path = save_calibration(cs, tmp_path / "calibration.json")
    back = load_calibration(path)
    assert back == cs
    assert isinstance(back.pairs["text_title"].params, IsotonicParams)
    assert isinstance(back.pairs["image_image"].params, PlattParams)
    np.testing.assert_array_equal(back.apply("text_title", GRID), cs.apply("text_title", GRID))
    assert not (tmp_path / "calibration.json.tmp").exists()


def test_load_rejects_other_schema_version(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema_version": 2, "pairs": {}}))
    with pytest.raises(CalibrationError, match="schema_version 2"):
        load_calibration(path)


def test_load_error_names_field(tmp_path):
    cs = fit_calibration_set({"image_image": (np.array([0.9, 0.8, 0.2]), np.array([1, 1, 0]))})
    data = json.loads(cs.model_dump_json())
    data["pairs"]["image_image"]["params"]["slope"] = -1.0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"pairs\.image_image\.params\.platt\.slope"):
        load_calibration(path)


def test_isotonic_params_validated():
    with pytest.raises(ValueError, match="non-decreasing"):
        IsotonicParams(knots_x=(0.1, 0.2), knots_y=(0.6, 0.4))
    with pytest.raises(ValueError, match="strictly increasing"):
        IsotonicParams(knots_x=(0.2, 0.2), knots_y=(0.4, 0.6))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(CalibrationError, match="both relevant and irrelevant"):
        fit_pair("text_image", np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(CalibrationError, match="unknown modality pair 'audio_image'"):
        fit_pair("audio_image", np.array([0.1, 0.2]), np.array([1, 0]))
    with pytest.raises(CalibrationError, match="labels must be 0 or 1"):
        fit_platt(np.array([0.1, 0.2]), np.array([1, 2]))
    cs = CalibrationSet(pairs={})
    with pytest.raises(CalibrationError, match="no calibration for modality pair 'text_image'"):
        cs.apply("text_image", np.array([0.1]))

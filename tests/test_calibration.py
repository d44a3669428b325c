"""The calibrated method: the mix fit, the strength-effect curve, calibration.json, the push."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.calibrate import choose_ridge, fit_mix, leakage_means, selectivity
from conva_mlx.packs.calibration import (
    CALIBRATION_JSON,
    Calibration,
    CurvePoint,
    ValueCalibration,
    find_calibration,
    read_calibration,
    write_calibration,
)
from conva_mlx.packs.pack import Pack, load_pack, save_pack
from conva_mlx.steering import SteerConfig, Target
from conva_mlx.steering.effects import expected_effects
from conva_mlx.steering.hooks import calibrated_deltas


def _leaky(k: int = 6, seed: int = 0) -> np.ndarray:
    """A leakage matrix like the measured ones: every push moves every value a little in
    common, its own value most, some rows more than others."""
    rng = np.random.default_rng(seed)
    return np.diag(rng.uniform(1.0, 3.0, k)) + rng.uniform(0.3, 1.2, (k, 1)) \
        + 0.2 * rng.standard_normal((k, k))


def test_an_unregularised_mix_undoes_the_leakage() -> None:
    leak = _leaky()
    w = fit_mix(leak, target=2.0, ridge=0.0)
    np.testing.assert_allclose(w @ leak, 2.0 * np.eye(6), atol=1e-8)


def test_every_row_is_sized_to_the_target_shift_and_beats_the_plain_pushes() -> None:
    leak = _leaky()
    w = fit_mix(leak, target=2.0, ridge=1.0)
    pred = w @ leak
    np.testing.assert_allclose(np.diag(pred), 2.0)
    own, off, largest = selectivity(pred)
    base_own, base_off, _ = selectivity(leak)
    assert own / off > base_own / base_off
    assert largest == 6


def test_a_value_no_push_moves_falls_back_to_its_own_push() -> None:
    leak = np.array([[0.0, 0.5], [0.0, 2.0]])  # nothing moves value 0's dilemmas
    w = fit_mix(leak, target=2.0, ridge=1.0)
    assert w[0, 0] == pytest.approx(1.0) and w[0, 1] == 0.0
    assert (w @ leak)[1, 1] == pytest.approx(2.0)


def test_the_ridge_is_chosen_on_held_out_halves_of_noisy_responses() -> None:
    rng = np.random.default_rng(1)
    leak = _leaky(k=4, seed=2)
    cols = np.repeat(np.arange(4), 20)
    responses = leak[:, cols] + rng.standard_normal((4, cols.size))
    ridge, table = choose_ridge(responses, cols, 2.0, repeats=5)
    assert ridge in [row["ridge"] for row in table]
    best = max(row["selectivity"] for row in table)
    plain_own, plain_off, _ = selectivity(leakage_means(responses, cols, 4))
    assert best > plain_own / plain_off


def _value_cal(unsteered: float = 0.4) -> ValueCalibration:
    return ValueCalibration({"benevolence": 1.0}, unsteered,
                            [CurvePoint(0.5, 1.0, 0.55, -0.1), CurvePoint(1.0, 2.0, 0.7, -0.2),
                             CurvePoint(2.0, 4.0, 0.85, -0.5)], 30)


def test_a_strength_reads_off_the_measured_curve_and_back() -> None:
    cal = _value_cal()
    assert cal.effect_at(0.0) == pytest.approx(0.4)
    assert cal.effect_at(1.0) == pytest.approx(0.7)
    assert cal.effect_at(1.5) == pytest.approx(0.775)
    assert cal.strength_for(0.7) == pytest.approx(1.0)
    assert cal.strength_for(0.775) == pytest.approx(1.5)
    assert cal.strength_for(0.3) == 0.0  # already favoured that often unsteered
    assert cal.strength_for(0.99) == pytest.approx(2.0)  # the most the curve reaches
    assert cal.max_effect() == pytest.approx(0.85)


def _calibration(values: dict[str, ValueCalibration], fingerprint: str = "f" * 16
                 ) -> Calibration:
    return Calibration(fingerprint, "h", "accuracy", 2.0, values, 1.0)


def test_calibration_json_round_trips_and_refuses_an_overwrite(tmp_path: Path) -> None:
    cal = _calibration({"benevolence": _value_cal()})
    path = write_calibration(cal, tmp_path)
    back = read_calibration(path)
    assert [p.as_dict() for p in back.values["benevolence"].curve] == \
        [p.as_dict() for p in cal.values["benevolence"].curve]
    assert back.values["benevolence"].mix == {"benevolence": 1.0}
    with pytest.raises(ConvaError, match="--force"):
        write_calibration(cal, tmp_path)
    write_calibration(cal, tmp_path, force=True)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "not a conva-mlx calibration"),
    (lambda d: d["values"]["benevolence"]["curve"][0].update(strength=99), "strength"),
    (lambda d: d["values"]["benevolence"].update(unsteered_favoured=1.5), "share"),
    (lambda d: d["values"]["benevolence"]["mix"].update(kindness=1.0), "unknown value"),
    (lambda d: d.update(target_shift=-1), "target_shift"),
])
def test_a_bad_calibration_file_is_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    data = _calibration({"benevolence": _value_cal()}).to_json()
    edit(data)
    (tmp_path / CALIBRATION_JSON).write_text(json.dumps(data))
    with pytest.raises(ConvaError, match=message):
        read_calibration(tmp_path / CALIBRATION_JSON)


def test_the_calibrated_push_is_the_mix_of_mean_differences_times_the_strength(
        small_pack: Pack) -> None:
    pack = Pack(small_pack.model, small_pack.values, small_pack.gate, small_pack.dataset_hash,
                recipe=small_pack.recipe)
    pack.calibration = _calibration({"benevolence": ValueCalibration(
        {"benevolence": 1.0, "power": -0.5}, 0.4, _value_cal().curve)},
        pack.model.fingerprint)
    cfg = SteerConfig(["benevolence"], method="calibrated", strength=2.0)
    deltas = calibrated_deltas(pack, cfg, cfg.targets)
    ben, pw = pack.values["benevolence"], pack.values["power"]
    for k in set(ben.layers) | set(pw.layers):
        want = np.zeros_like(ben.probes.caa[k])
        if k in ben.layers:
            want += 2.0 * ben.probes.caa[k]
        if k in pw.layers:
            want -= 1.0 * pw.probes.caa[k]
        np.testing.assert_allclose(np.array(deltas[k]), want, rtol=1e-5, atol=1e-6)
    # a level asks the curve for its strength: 0.775 of dilemmas -> strength 1.5
    cfg = SteerConfig([Target("benevolence", 0.775)], method="calibrated")
    half = calibrated_deltas(pack, cfg, cfg.targets)
    k = ben.layers[0]
    np.testing.assert_allclose(np.array(half[k]), np.array(deltas[k]) * 0.75, rtol=1e-5,
                               atol=1e-6)
    effects = expected_effects(pack, cfg, cfg.targets)
    assert effects[0].strength == pytest.approx(1.5)
    assert effects[0].favoured == pytest.approx(0.775)
    assert "favoured on 78% of held-out dilemmas (unsteered 40%)" in effects[0].sentence()
    assert isinstance(half[k], mx.array)


def test_an_uncalibrated_pack_pushes_the_value_own_mean_difference(small_pack: Pack) -> None:
    cfg = SteerConfig(["power"], method="calibrated")
    assert small_pack.calibration is None
    deltas = calibrated_deltas(small_pack, cfg, cfg.targets)
    caa = SteerConfig(["power"], method="caa")
    from conva_mlx.steering.hooks import caa_deltas
    plain = caa_deltas(small_pack, caa, caa.targets)
    assert sorted(deltas) == sorted(plain)
    for k in deltas:
        np.testing.assert_allclose(np.array(deltas[k]), np.array(plain[k]), rtol=1e-6)


def test_a_pack_finds_its_calibration_and_a_foreign_one_is_refused(
        small_pack: Pack, tmp_path: Path) -> None:
    out = save_pack(small_pack, tmp_path / "p")
    assert load_pack(out).calibration is None
    cal = _calibration({"power": ValueCalibration({"power": 1.0}, 0.5, [])},
                       small_pack.model.fingerprint)
    write_calibration(cal, out)
    loaded = load_pack(out)
    assert loaded.calibration is not None and loaded.calibration_source.endswith(
        CALIBRATION_JSON)
    assert loaded.digest() != small_pack.digest()  # steering reads the mix
    write_calibration(_calibration({"power": ValueCalibration({"power": 1.0}, 0.5, [])}),
                      out, force=True)
    with pytest.raises(ConvaError, match="calibrated for model"):
        load_pack(out)
    write_calibration(_calibration({"tradition": ValueCalibration({"tradition": 1.0}, 0.5,
                                                                  [])},
                                   small_pack.model.fingerprint), out, force=True)
    with pytest.raises(ConvaError, match="does not have"):
        load_pack(out)
    cal_none, source = find_calibration(None, "0" * 16, "h", "accuracy")
    assert cal_none is None and source == ""

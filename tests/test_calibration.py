"""The calibrated method: the mix fit, the strength-effect curve, calibration.json, the push."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conva_mlx.data.dataset import ValueData
from conva_mlx.errors import ConvaError
from conva_mlx.evaluation.calibrate import DosePoint, choose_coef
from conva_mlx.extraction import contrast_vectors
from conva_mlx.packs.calibration import (
    CALIBRATION_JSON,
    SHIPPED_DIR,
    Calibration,
    CurvePoint,
    ValueCalibration,
    find_calibration,
    read_calibration,
    shipped_name,
    write_calibration,
)
from conva_mlx.packs.pack import Pack, load_pack
from conva_mlx.packs.save import save_pack
from conva_mlx.steering import SteerConfig, Target
from conva_mlx.steering.effects import expected_effects
from conva_mlx.steering.engine import resolve_defaults
from conva_mlx.steering.hooks import caa_deltas, calibrated_deltas
from conva_mlx.values import VALUE_NAMES


def test_the_size_is_the_smallest_fluent_coefficient_reaching_the_target() -> None:
    pts = [DosePoint(0.5, 0.5, 0.5, -0.2), DosePoint(1.0, 1.0, 0.6, -0.5),
           DosePoint(2.0, 3.0, 0.8, -1.0), DosePoint(3.0, 4.0, 0.9, -6.0)]
    coef, reached = choose_coef(pts, target=2.0, floor=-3.0)
    assert reached and coef == pytest.approx(1.5, abs=0.02)  # 1.0 -> 1, 2.0 -> 3: 2 at 1.5


def test_out_of_reach_the_largest_fluent_coefficient_is_used() -> None:
    pts = [DosePoint(1.0, 0.2, 0.5, -1.0), DosePoint(2.0, 0.4, 0.5, -2.0),
           DosePoint(3.0, 0.6, 0.5, -5.0)]
    coef, reached = choose_coef(pts, target=2.0, floor=-3.0)
    assert not reached and coef == pytest.approx(2.33, abs=0.02)  # fluency -3 at 2.33
    coef, reached = choose_coef([DosePoint(1.0, 5.0, 0.9, -9.0)], 2.0, -3.0)
    assert not reached and coef == pytest.approx(0.33, abs=0.02)  # the floor comes first
    coef, reached = choose_coef([DosePoint(1.0, 5.0, 0.9, -9.0)], 1.0, -3.0)
    assert reached and coef == pytest.approx(0.2, abs=0.02)


def test_contrast_vectors_set_one_value_against_the_rest_at_the_mean_difference_norm(
        ) -> None:
    rng = np.random.default_rng(0)
    pos = {v: rng.standard_normal((3, 8)) for v in ("a", "b", "c")}
    md = {v: rng.standard_normal((3, 8)) for v in pos}
    out = contrast_vectors(pos, md)
    for v in pos:
        want = pos[v] - np.mean([pos[u] for u in pos if u != v], axis=0)
        cos = (out[v] * want).sum(-1) / (np.linalg.norm(out[v], axis=-1)
                                         * np.linalg.norm(want, axis=-1))
        np.testing.assert_allclose(cos, 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out[v], axis=-1),
                                   np.linalg.norm(md[v], axis=-1), rtol=1e-5)
    assert contrast_vectors({"a": pos["a"]}, {"a": md["a"]}) == {}


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
    return Calibration(fingerprint, "h", "accuracy", 2.0, values, direction="mean-diff")


def test_calibration_json_round_trips_and_refuses_an_overwrite(tmp_path: Path) -> None:
    cal = _calibration({"benevolence": _value_cal()})
    path = write_calibration(cal, tmp_path)
    back = read_calibration(path)
    assert [p.as_dict() for p in back.values["benevolence"].curve] == \
        [p.as_dict() for p in cal.values["benevolence"].curve]
    assert back.values["benevolence"].mix == {"benevolence": 1.0}
    with pytest.raises(ConvaError, match="--force"):
        write_calibration(cal, tmp_path)
    assert back.strength == 1.0 and cal.to_json()["strength"] == 1.0
    cal.strength = 0.5
    write_calibration(cal, tmp_path, force=True)
    assert read_calibration(path).strength == 0.5
    minimal = cal.to_json()
    del minimal["format_version"], minimal["strength"]  # optional: version 1, strength 1
    path.write_text(json.dumps(minimal))
    assert read_calibration(path).values.keys() == {"benevolence"}
    assert read_calibration(path).strength == 1.0
    write_calibration(cal, tmp_path, force=True)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "not a conva-mlx calibration"),
    (lambda d: d["values"]["benevolence"]["curve"][0].update(strength=99), "strength"),
    (lambda d: d["values"]["benevolence"].update(unsteered_favoured=1.5), "share"),
    (lambda d: d["values"]["benevolence"]["mix"].update(kindness=1.0), "unknown value"),
    (lambda d: d["values"]["benevolence"].update(instructed={"favoured": 2, "curve": []}),
     "share"),
    (lambda d: d.update(instruct=True), "'instruct' needs every value's curve"),
    (lambda d: d.update(instruct="yes"), "'instruct' must be true or false"),
    (lambda d: d.update(strength=0), "'strength' \\(the default strength\\) must be in"),
    (lambda d: d.update(strength=9), "'strength' \\(the default strength\\) must be in"),
    (lambda d: d.update(strength="half"), "strength"),
    (lambda d: d.update(target_shift=-1), "target_shift"),
    (lambda d: d.update(direction="probe"), "direction"),
    (lambda d: d.update(format_version=2), "newer than this conva-mlx"),
    (lambda d: d.pop("target_shift"), "target_shift"),
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
    # with the instruction: no promise from a calibration of the push alone, and the
    # instructed curve's where it was measured
    instructed = SteerConfig([Target("benevolence", 0.775)], instruct=True)
    assert expected_effects(pack, instructed, instructed.targets) == []
    pack.calibration.values["benevolence"] = _instructed_cal()
    got = expected_effects(pack, instructed, instructed.targets)[0]
    assert got.instructed and got.strength == pytest.approx(0.875)  # 0.6 -> 0.8 over 0 -> 1
    assert got.favoured == pytest.approx(0.775) and got.unsteered == pytest.approx(0.4)
    assert got.sentence().endswith("with the instruction")
    assert got.as_dict()["instructed"] is True


def _instructed_cal() -> ValueCalibration:
    cal = _value_cal()
    cal.instructed_favoured = 0.6
    cal.instructed_curve = [CurvePoint(1.0, 2.5, 0.8, -0.4), CurvePoint(2.0, 4.0, 0.9, -1.0)]
    return cal


def test_the_instructed_curve_reads_and_round_trips(tmp_path: Path) -> None:
    cal = _instructed_cal()
    assert cal.has_instructed and not _value_cal().has_instructed
    assert cal.effect_at(0.0, instructed=True) == pytest.approx(0.6)  # the instruction alone
    assert cal.effect_at(1.5, instructed=True) == pytest.approx(0.85)
    assert cal.strength_for(0.85, instructed=True) == pytest.approx(1.5)
    assert cal.max_effect(instructed=True) == pytest.approx(0.9)
    assert cal.effect_at(1.0) == pytest.approx(0.7)  # the push alone's curve is unchanged
    with pytest.raises(ConvaError, match="calibrate --instruct"):
        _value_cal().effect_at(1.0, instructed=True)
    write_calibration(_calibration({"benevolence": cal}), tmp_path)
    back = read_calibration(tmp_path / CALIBRATION_JSON).values["benevolence"]
    assert back.instructed_favoured == pytest.approx(0.6)
    assert [p.as_dict() for p in back.instructed_curve] == \
        [p.as_dict() for p in cal.instructed_curve]
    assert "instructed" not in _calibration({"b": _value_cal()}).to_json()["values"]["b"]
    both = _calibration({"benevolence": cal})
    both.instruct = True
    write_calibration(both, tmp_path, force=True)
    assert read_calibration(tmp_path / CALIBRATION_JSON).instruct is True


def test_an_uncalibrated_pack_pushes_the_value_contrast_vector(small_pack: Pack) -> None:
    cfg = resolve_defaults(small_pack, SteerConfig(["power"], method="calibrated"))
    assert small_pack.calibration is None and cfg.strength == 1.0
    contrast = small_pack.values["power"].contrast
    assert contrast is not None  # extraction computes it (power against benevolence)
    deltas = calibrated_deltas(small_pack, cfg, cfg.targets)
    assert sorted(deltas) == sorted(small_pack.values["power"].layers)
    for k in deltas:
        np.testing.assert_allclose(np.array(deltas[k]), contrast[k], rtol=1e-6)
        assert np.linalg.norm(contrast[k]) == pytest.approx(
            np.linalg.norm(small_pack.values["power"].probes.caa[k]), rel=1e-4)
    # without contrast vectors (an older pack) it is CAA's push
    old = Pack(small_pack.model, {v: replace(e, contrast=None)
                                  for v, e in small_pack.values.items()},
               small_pack.gate, small_pack.dataset_hash, recipe=small_pack.recipe)
    plain = caa_deltas(old, SteerConfig(["power"], method="caa"), cfg.targets)
    for k, d in calibrated_deltas(old, cfg, cfg.targets).items():
        np.testing.assert_allclose(np.array(d), np.array(plain[k]), rtol=1e-6)


def test_a_pack_finds_its_calibration_and_a_foreign_one_is_refused(
        small_pack: Pack, tmp_path: Path) -> None:
    out = save_pack(small_pack, tmp_path / "p")
    plain = load_pack(out)
    assert plain.calibration is None
    for v, e in small_pack.values.items():
        np.testing.assert_array_equal(plain.values[v].contrast, e.contrast)
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


def test_calibrate_cli_sizes_each_value_writes_the_pack_and_resumes(
        small_pack_dir: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from conva_mlx.cli.main import cli
    from conva_mlx.evaluation.calibrate import band_blocks

    pack_dir = tmp_path / "pack"
    shutil.copytree(small_pack_dir, pack_dir)
    out = tmp_path / "cal"
    args = ["calibrate", "--pack", str(pack_dir), "--n", "4", "--coefs", "0.5,1",
            "--out", str(out), "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    cal = load_pack(pack_dir).calibration
    assert cal is not None and set(cal.values) == {"benevolence", "power"}
    assert cal.direction == "contrast"
    assert cal.blocks == band_blocks(load_pack(pack_dir).model.num_layers)
    for name, v in cal.values.items():
        (coef,) = v.mix.values()
        assert set(v.mix) == {name} and 0 < coef <= 1.0
        assert sorted(p.strength for p in v.curve) == pytest.approx(
            sorted(c / coef for c in (0.5, 1.0)), rel=1e-3)
        assert v.n == 4
    scored = (out / "choices.jsonl").read_text().count("\n")
    assert scored == 2 * 4 * 3  # (none + two coefficients) x 4 dilemmas x 2 values
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--force" in again.output  # before loading the model
    forced = CliRunner().invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "choices.jsonl").read_text().count("\n") == scored  # resumed, not rescored
    assert "instructed" not in forced.output
    instructed = CliRunner().invoke(cli, [*args, "--force", "--instruct"])
    assert instructed.exit_code == 0, instructed.output
    # only the new settings are scored: two coefficients with the instruction, and ICA alone
    assert (out / "choices.jsonl").read_text().count("\n") == scored + 2 * 4 * 3
    again_cal = load_pack(pack_dir).calibration
    assert again_cal is not None
    for name, v in again_cal.values.items():
        assert v.mix == cal.values[name].mix  # the sizes stay the push alone's
        assert v.has_instructed and len(v.instructed_curve) == 2
        assert [p.strength for p in v.instructed_curve] == [p.strength for p in v.curve]
    assert "With ICA's instruction" in (out / "calibration.md").read_text()
    assert again_cal.instruct and not cal.instruct  # --instruct makes it the pack's default
    assert again_cal.strength == cal.strength == 1.0
    # the strength readers chose is recorded without scoring anything again
    half = CliRunner().invoke(cli, [*args, "--force", "--instruct", "--default-strength", "0.5"])
    assert half.exit_code == 0, half.output
    assert (out / "choices.jsonl").read_text().count("\n") == scored + 2 * 4 * 3
    half_cal = load_pack(pack_dir).calibration
    assert half_cal is not None and half_cal.strength == 0.5 and half_cal.instruct
    assert "Default: ICA's instruction + the push at strength 0.5." in \
        (out / "calibration.md").read_text()
    bad = CliRunner().invoke(cli, [*args, "--force", "--default-strength", "0"])
    assert bad.exit_code != 0 and "default strength must be in (0, 8]" in bad.output


def test_keep_sizes_measures_the_curve_again_at_the_calibrated_push(
        small_pack_dir: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from conva_mlx.cli.main import cli

    pack_dir = tmp_path / "pack"
    shutil.copytree(small_pack_dir, pack_dir)
    keep = ["calibrate", "--pack", str(pack_dir), "--keep-sizes", "--coefs", "0.5,1",
            "--out", str(tmp_path / "keep"), "--force"]
    none = CliRunner().invoke(cli, [*keep, "--n", "4"])
    assert none.exit_code != 0 and "needs a pack with a calibration" in none.output
    sized = CliRunner().invoke(cli, ["calibrate", "--pack", str(pack_dir), "--n", "4",
                                     "--coefs", "0.5,1", "--instruct", "--default-strength",
                                     "0.5", "--out", str(tmp_path / "size")])
    assert sized.exit_code == 0, sized.output
    first = load_pack(pack_dir).calibration
    assert first is not None
    plain = CliRunner().invoke(cli, [*keep, "--n", "6"])
    assert plain.exit_code != 0 and "pass --instruct" in plain.output
    again = CliRunner().invoke(cli, [*keep, "--n", "6", "--instruct"])
    assert again.exit_code == 0, again.output
    cal = load_pack(pack_dir).calibration
    assert cal is not None and cal.instruct and cal.strength == 0.5  # the kept default
    assert cal.notes["n_dilemmas"] == 12 and cal.notes["sizes_from_n_dilemmas"] == 8
    for name, v in cal.values.items():
        assert v.mix == first.values[name].mix  # the sizes readers confirmed stay
        assert v.n == 6
        assert [p.strength for p in v.curve] == [0.5, 1.0]  # in the calibrated push's units
        assert [p.strength for p in v.instructed_curve] == [0.5, 1.0]
    # scored: unsteered, two strengths alone and with the instruction, the instruction alone
    assert (tmp_path / "keep" / "choices.jsonl").read_text().count("\n") == 6 * 12
    other = CliRunner().invoke(cli, [*keep, "--n", "6", "--instruct",
                                     "--default-strength", "1"])
    assert other.exit_code == 0, other.output
    cal_one = load_pack(pack_dir).calibration
    assert cal_one is not None and cal_one.strength == 1.0
    assert cal_one.notes["sizes_from_n_dilemmas"] == 8  # still the sizing run's, not the last


def test_overwriting_a_pack_drops_its_old_calibration_and_a_resave_keeps_it(
        small_pack: Pack, tmp_path: Path) -> None:
    out = save_pack(small_pack, tmp_path / "p")
    write_calibration(_calibration({"power": ValueCalibration({"power": 1.0}, 0.5, [])},
                                   small_pack.model.fingerprint), out)
    calibrated = load_pack(out)
    save_pack(calibrated, tmp_path / "copy")  # the same vectors: the calibration goes along
    assert load_pack(tmp_path / "copy").calibration is not None
    save_pack(small_pack, out, overwrite=True)  # new vectors (say): the old one is stale
    assert not (out / CALIBRATION_JSON).exists()
    assert load_pack(out).calibration is None


@pytest.mark.parametrize("path", sorted(SHIPPED_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_calibration_reads_is_named_after_its_model_and_covers_ten_values(
        path: Path) -> None:
    # A shipped file is found by its name alone, so a misnamed or stale one would be used
    # silently for the wrong model or never at all.
    cal = read_calibration(path)
    assert path.name == shipped_name(cal.model_fingerprint, cal.recipe)
    assert cal.dataset_hash == ValueData().digest()
    assert set(cal.values) == set(VALUE_NAMES)
    for value, vc in cal.values.items():
        assert vc.curve and vc.mix.get(value, 0.0) > 0, value
        assert 0.0 < vc.effect_at(1.0) <= 1.0


def test_the_three_offline_models_ship_a_calibration() -> None:
    # model fingerprints: SmolLM2-135M, Qwen2.5-Coder-0.5B, Qwen2.5-Coder-1.5B (their packs'
    # model.fingerprint); without this the test above would pass on an empty folder
    for fingerprint in ("f7b75787ff4f0b71", "023146a0c0b2baa4", "3dedc790e9ff12e9"):
        assert (SHIPPED_DIR / shipped_name(fingerprint, "accuracy")).is_file(), fingerprint


def test_the_shipped_defaults_are_the_ones_blind_readers_chose() -> None:
    # chosen on each model's calibration half, confirmed on its test half (docs/evaluation.md):
    # a re-calibration that forgets --instruct or --default-strength would change the product
    def shipped(fingerprint: str) -> Calibration:
        return read_calibration(SHIPPED_DIR / shipped_name(fingerprint, "accuracy"))

    smol, qwen05, qwen15 = (shipped(f) for f in ("f7b75787ff4f0b71", "023146a0c0b2baa4",
                                                 "3dedc790e9ff12e9"))
    assert (smol.instruct, smol.strength) == (True, 1.0)  # rounds G and H
    assert (qwen05.instruct, qwen05.strength) == (True, 0.5)  # rounds I and J
    assert (qwen15.instruct, qwen15.strength) == (False, 1.0)  # the push alone
    for cal in (smol, qwen05):
        assert all(v.has_instructed for v in cal.values.values())

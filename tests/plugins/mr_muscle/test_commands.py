from __future__ import annotations

import json
from pathlib import Path

from acqflow.plugins.mr_muscle.commands import train
from acqflow.plugins.mr_muscle.translation import load_generator


def test_train_command_writes_weights_card_samples_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "model"
    options = dict(
        synthetic=1,
        iterations=2,
        crop=64,
        base_channels=4,
        residual_blocks=1,
        discriminator_channels=4,
        discriminator_layers=3,
        seed=3,
        output=output,
        work_dir=tmp_path / "work",
        threads=1,
        quiet=True,
    )
    card_path = train(**options)  # type: ignore[arg-type]
    card = json.loads(card_path.read_text())
    assert card["training"]["seed"] == 3
    command = card["training"]["command"]
    assert command.startswith("acqflow train mr-to-ct") and "--seed 3" in command
    assert "--iterations 2" in command
    assert card["training"]["data"]["mr"]["volumes"] == 1
    _generator, loaded, scale = load_generator(output)
    assert loaded.sha256 == card["sha256"] and scale.pixel_spacing_mm == 3.0
    assert sorted(p.name for p in (tmp_path / "work" / "samples").iterdir()) == ["iteration_000002.png"]
    # A second call with more iterations resumes from the checkpoint of the first.
    again = json.loads(train(**{**options, "iterations": 3}).read_text())  # type: ignore[arg-type]
    assert again["training"]["resumed_from_iteration"] == 2


def test_evaluate_review_fits_a_threshold_per_measure_and_scores_the_defaults(tmp_path: Path) -> None:
    from acqflow.plugins.ct_muscle.evaluation import review_threshold_at
    from acqflow.plugins.mr_muscle.commands import evaluate
    from acqflow.plugins.mr_muscle.pipeline import MR_REVIEW_THRESHOLDS

    out = tmp_path / "review.json"
    result = evaluate(
        phantoms=1, first=500, slices=8, samples=2, review=True, json_out=out, threads=1, quiet=True
    )
    assert json.loads(out.read_text()) == result
    measures = ["variance", "entropy", "mutual_information"]
    assert sorted(result["review_thresholds"]) == sorted(measures) == sorted(result["defaults"])
    pairs = result["pairs"]
    assert pairs and all({"dice", "structure", *measures} <= set(p) for p in pairs)
    assert len({p["structure"] for p in pairs}) == len(pairs)  # one phantom: each structure once
    for measure in measures:
        fit = result["review_thresholds"][measure]
        uncertainty, dice = [p[measure] for p in pairs], [p["dice"] for p in pairs]
        again = review_threshold_at(uncertainty, dice, fit["threshold"], dice_below=0.7)
        assert (fit["sensitivity"], fit["precision"], fit["specificity"], fit["f1"]) == (
            round(again.sensitivity, 4),
            round(again.precision, 4),
            round(again.specificity, 4),
            round(again.f1, 4),
        )
        default = result["defaults"][measure]
        assert default["threshold"] == round(MR_REVIEW_THRESHOLDS[measure], 4)  # type: ignore[index]
        assert default["structures"] == fit["structures"] == len(pairs)
    assert result["held_out"]["first"] == 500 and result["held_out"]["samples"] == 2

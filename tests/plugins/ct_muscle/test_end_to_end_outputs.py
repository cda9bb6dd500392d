"""The pipeline with the shipped weights on a demo series: every output passes dciodvfy,
and the SEG decodes to exactly the pipeline's label map (and close to the phantom truth)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from acqflow.models.store import bundled_weights_dir
from acqflow.plugins.api import PipelineContext, SeriesItem
from acqflow.plugins.common.dicom_outputs import content_digest
from acqflow.plugins.common.volume import series_to_volume
from acqflow.plugins.ct_muscle.inference import load_model, mc_seed, predict_volume
from acqflow.plugins.ct_muscle.phantoms import demo_ct_series, generate_phantom
from acqflow.plugins.ct_muscle.pipeline import CtMuscleOptions, CtMusclePipeline
from acqflow.plugins.ct_muscle.structures import default_label_table
from acqflow.plugins.ct_muscle.training import dice_per_class

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed"),
]


def test_pipeline_outputs_validate_and_match_the_label_map(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    datasets = demo_ct_series(42)
    random.Random(1).shuffle(datasets)
    item = SeriesItem(identity="e2e", study_uid=str(datasets[0].StudyInstanceUID),
                      series_uid=str(datasets[0].SeriesInstanceUID), modality="CT",
                      datasets=datasets)
    pipeline = CtMusclePipeline()
    pipeline.load(PipelineContext(device="cpu", options={"samples": 4}))
    result = pipeline.run(item)

    volume = series_to_volume(datasets)
    model, card, geometry = load_model(bundled_weights_dir())
    # The pipeline seeds its MC-dropout masks from the content and the weights.
    seed = mc_seed("ct-muscle", content_digest(volume.datasets), card.sha256, card.version)
    expected = predict_volume(model, volume.array, volume.geometry.spacing[1:], geometry,
                              CtMuscleOptions(samples=4).mc(), seed=seed).labels

    for output in result.dicom:
        path = tmp_path / output.name
        output.dataset.save_as(path, enforce_file_format=True)
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                             check=False, timeout=120)
        errors = [line for line in (run.stdout + run.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], (output.name, errors)

    seg = hd.seg.segread(tmp_path / "ct-muscle-seg.dcm")
    uids = [s.sop_instance_uid for s in volume.sources]
    numbers = np.asarray(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, relabel=False))
    by_type = {s.type.value: s.label for s in default_label_table()}
    lut = np.zeros(len(seg.segment_numbers) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:
        lut[number] = by_type[seg.get_segment_description(number).segmented_property_type.value]
    decoded = lut[numbers]
    np.testing.assert_array_equal(decoded, expected)
    truth = generate_phantom(42).labels[::-1]  # the series steps towards the feet
    assert np.mean(list(dice_per_class(decoded, truth, 23).values())) > 0.85

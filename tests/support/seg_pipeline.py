"""A test pipeline that runs the shared CT/MR steps of the real pipelines, without a model.

``VolumeSegmentation`` ("test-volume-seg") sorts, checks and decodes a series into a
volume (``acqflow.plugins.common.volume.series_to_volume``: modality, geometry, sizes, pixel
decoding) and writes a DICOM SEG of a threshold mask through
``acqflow.plugins.common.dicom_outputs.build_segmentation`` (highdicom, which copies the patient
and study modules of the source images). A series the real pipelines would refuse or
choke on is therefore refused or choked on here too, in milliseconds and without torch:
the bad-input corpus (``tests/reliability``) routes every DICOM series to it. Registered
by tests through ``pipelines.modules``, never shipped.
"""

from __future__ import annotations

import json

import numpy as np
from pydicom.uid import generate_uid

from acqflow.plugins.api import (
    DicomOutput,
    FileOutput,
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    SeriesItem,
)

__all__ = ["VolumeSegmentation"]


class VolumeSegmentation:
    """Volume checks of the real pipelines, then a one-segment SEG of ``value > mean``."""

    name = "test-volume-seg"
    version = "1.0"
    input_kind = InputKind.DICOM_SERIES

    def load(self, context: PipelineContext) -> None:
        self.options = dict(context.options)

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        from acqflow.plugins.common.dicom_outputs import (
            AlgorithmInfo,
            CodeSpec,
            DeviceInfo,
            InstanceIds,
            SegmentSpec,
            build_segmentation,
        )
        from acqflow.plugins.common.volume import VolumeOptions, series_to_volume

        if not isinstance(item, SeriesItem):
            raise InvalidInputError("test-volume-seg takes DICOM series")
        volume = series_to_volume(item.datasets, VolumeOptions(modalities=("CT", "MR")))
        mask = (volume.array > float(volume.array.mean())).astype(np.uint8)
        segment = SegmentSpec(
            number=1,
            label=1,
            name="bright",
            category=CodeSpec("91723000", "SCT", "Anatomical Structure"),
            type=CodeSpec("71616004", "SCT", "Muscle"),
            tracking_uid=generate_uid(entropy_srcs=[item.identity, self.version, "track"]),
        )
        ids = InstanceIds(
            series_instance_uid=generate_uid(entropy_srcs=[item.identity, self.version, "series"]),
            sop_instance_uid=generate_uid(entropy_srcs=[item.identity, self.version, "sop"]),
            series_number=9002,
            series_description="acqflow test segmentation",
        )
        seg = build_segmentation(
            volume, mask, [segment], ids, DeviceInfo(), AlgorithmInfo(self.name, self.version)
        )
        summary = {"slices": int(volume.array.shape[0]), "modality": volume.modality}
        return PipelineResult(
            files=(FileOutput("summary.json", json.dumps(summary).encode(), "application/json"),),
            dicom=(DicomOutput("seg", seg),),
            summary=f"{summary['slices']} slices segmented",
        )

"""The ``mr-muscle`` pipeline: MR series in, SEG + uncertainty map + SR on the MR out.

Steps, each a separate function: MR series to volume (the shared series-to-volume step
with the CT checks, modality MR), normalisation and CycleGAN translation to synthetic
CT in HU (:mod:`acqflow.plugins.mr_muscle.translation`), the CT pipeline's MC-dropout inference
and measurements (:mod:`acqflow.plugins.ct_muscle.inference`), and the CT pipeline's DICOM
objects (:mod:`acqflow.plugins.ct_muscle.reporting`) built on the MR volume, so they reference
the MR instances and frame of reference. Optionally the synthetic CT itself as a derived
series marked not for diagnosis. Construction is cheap; torch loads in :meth:`load`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from acqflow.plugins.api import (
    DicomOutput,
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    Record,
    SeriesItem,
)
from acqflow.plugins.ct_muscle.inference import ReviewScore, StructureMeasurement, UncertaintyMeasure
from acqflow.plugins.ct_muscle.pipeline import SegmentationOptions, structure_figures
from acqflow.plugins.mr_muscle.translation import IntensityScale

if TYPE_CHECKING:
    from acqflow.models.cyclegan import ResnetGenerator
    from acqflow.models.store import ModelCard
    from acqflow.models.unet import BayesianUNet
    from acqflow.plugins.common.volume import Volume
    from acqflow.plugins.ct_muscle.inference import InputGeometry
    from acqflow.plugins.ct_muscle.structures import LabelTable

__all__ = [
    "CONTRAST_AGNOSTIC_FOLDER",
    "MR_SEGMENTER_FOLDER",
    "MrMuscleOptions",
    "MrMusclePipeline",
    "MrRoute",
    "bundled_segmenter_dir",
]

# The bundled MR route segments the synthetic CT with the CT network it was trained and
# measured with (ct_muscle 1.1.0): the CT pipeline's 2.0.0, trained on randomised
# phantoms, lowered the MR phantoms' Dice from 0.777 to 0.712 through this generator.
# The MR route moves to it once the generator is retrained for it (docs/models/mr-muscle.md).
MR_SEGMENTER_FOLDER = "mr_muscle_segmenter"
# The second route's network (a ct_muscle card and weights), trained with the
# contrast-agnostic augmentation: it segments the intensity-normalised MR directly.
CONTRAST_AGNOSTIC_FOLDER = "mr_muscle_contrast_agnostic"


class MrRoute(str, Enum):
    """How an MR volume reaches a segmentation network."""

    SYNTHETIC_CT = "synthetic-ct"  # CycleGAN MR -> CT, then the CT network
    CONTRAST_AGNOSTIC = "contrast-agnostic"  # normalised MR into a network trained for any contrast


def bundled_segmenter_dir(route: MrRoute = MrRoute.SYNTHETIC_CT) -> Path:
    """The bundled folder of the network a route segments with (the synthetic-CT route:
    ct_muscle 1.1.0)."""
    from acqflow.models.store import bundled_weights_dir

    folder = MR_SEGMENTER_FOLDER if route is MrRoute.SYNTHETIC_CT else CONTRAST_AGNOSTIC_FOLDER
    return bundled_weights_dir() / folder

PIPELINE_NAME = "mr-muscle"
PIPELINE_VERSION = "1.0.0"


# Mean uncertainty inside a structure above which it is flagged for review, fitted for
# the demo weights (mr_to_ct + ct_muscle) on held-out MR phantoms 300-307 (T = 10): the
# best F1 for flagging structures with a Dice below 0.7 (`acqflow evaluate mr-muscle
# --review --first 300 --phantoms 8 --samples 10`); docs/models/mr-muscle.md gives how
# they do on phantoms 400-407. Recalibrate for other weights.
MR_REVIEW_THRESHOLDS = {
    UncertaintyMeasure.ENTROPY: 0.87,
    UncertaintyMeasure.VARIANCE: 0.15,
    UncertaintyMeasure.MUTUAL_INFORMATION: 0.36,
}
# The same for the contrast-agnostic route's network (route ``contrast-agnostic``), fitted
# on held-out randomised MR phantoms 300-305 (`acqflow evaluate mr-muscle --review --route
# contrast-agnostic --generator randomised --first 300 --phantoms 6 --samples 10`).
CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS = {
    UncertaintyMeasure.ENTROPY: 0.82,
    UncertaintyMeasure.VARIANCE: 0.076,
    UncertaintyMeasure.MUTUAL_INFORMATION: 0.22,
}


@dataclass(frozen=True)
class MrMuscleOptions(SegmentationOptions):
    """mr-muscle's options: ``route`` (``synthetic-ct``: CycleGAN translation, then the CT
    network; ``contrast-agnostic``: the normalised MR into the contrast-agnostic network);
    ``translation_batch`` slices per generator forward; ``synthetic_ct_series`` adds the
    synthetic CT as a derived DICOM series (marked not for diagnosis) to the outputs (the
    synthetic-CT route only).
    """

    pipeline: ClassVar[str] = PIPELINE_NAME
    default_review_thresholds: ClassVar[Mapping[UncertaintyMeasure, float]] = MR_REVIEW_THRESHOLDS
    # The MR thresholds are calibrated on the mean uncertainty (docs/models/mr-muscle.md).
    default_review_score: ClassVar[ReviewScore] = ReviewScore.UNCERTAINTY

    route: MrRoute = MrRoute.SYNTHETIC_CT
    translation_batch: int = 8
    synthetic_ct_series: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "route", MrRoute(self.route))
        except ValueError as exc:
            raise ValueError(f"route must be one of {', '.join(r.value for r in MrRoute)}") from exc
        super().__post_init__()
        if self.translation_batch < 1:
            raise ValueError("translation_batch must be >= 1")
        if self.synthetic_ct_series and self.route is not MrRoute.SYNTHETIC_CT:
            raise ValueError("synthetic_ct_series needs route synthetic-ct")

    def default_threshold(self) -> float:
        """The contrast-agnostic route's network has its own mean-uncertainty thresholds."""
        if self.route is MrRoute.CONTRAST_AGNOSTIC and self.score is ReviewScore.UNCERTAINTY:
            return CONTRAST_AGNOSTIC_REVIEW_THRESHOLDS[self.measure]
        return super().default_threshold()


@dataclass(frozen=True)
class _Models:
    generator: ResnetGenerator | None  # None on the contrast-agnostic route
    generator_card: ModelCard | None
    scale: IntensityScale
    unet: BayesianUNet
    unet_card: ModelCard
    geometry: InputGeometry
    table: LabelTable


class MrMusclePipeline:
    """Hip/thigh muscle and bone segmentation of MR series via CycleGAN synthetic CT."""

    name = PIPELINE_NAME
    version = PIPELINE_VERSION
    input_kind = InputKind.DICOM_SERIES

    def __init__(self) -> None:
        self._models: _Models | None = None
        self._options = MrMuscleOptions()

    def load(self, context: PipelineContext) -> None:
        """Read options, load generator and CT network once.

        Raises ValueError for bad options and acqflow.models.store.WeightsError for missing or
        corrupt weights (``mr_to_ct`` and ``ct_muscle`` in ``context.weights_dir``, or
        the bundled ``mr_to_ct`` and :func:`bundled_segmenter_dir`'s ``ct_muscle``; on the
        contrast-agnostic route only ``ct_muscle`` in ``<weights_dir>/``
        :data:`CONTRAST_AGNOSTIC_FOLDER` or the bundled folder of that name).
        """
        from acqflow.models.store import bundled_weights_dir
        from acqflow.plugins.ct_muscle.inference import load_model
        from acqflow.plugins.ct_muscle.structures import default_label_table, load_label_table
        from acqflow.plugins.mr_muscle.translation import load_generator

        options = MrMuscleOptions.from_mapping(context.options)
        table = load_label_table(Path(options.label_table)) if options.label_table else default_label_table()
        weights = context.weights_dir or bundled_weights_dir()
        generator, generator_card, scale = None, None, IntensityScale()
        if options.route is MrRoute.SYNTHETIC_CT:
            generator, generator_card, scale = load_generator(weights, context.device)
            segmenter = context.weights_dir or bundled_segmenter_dir()
        else:
            segmenter = (context.weights_dir / CONTRAST_AGNOSTIC_FOLDER if context.weights_dir
                         else bundled_segmenter_dir(options.route))
        unet, unet_card, geometry = load_model(segmenter, context.device, [s.key for s in table])
        self._models = _Models(generator, generator_card, scale, unet, unet_card, geometry, table)
        self._options = options

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        """Segment one MR series.

        Raises InvalidInputError for input that can never work (not a series, not MR,
        gaps, localizers, ...) and RuntimeError when :meth:`load` has not run.
        """
        from acqflow.plugins.common.dicom_outputs import content_digest
        from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
        from acqflow.plugins.ct_muscle.inference import mc_seed, measure_structures, predict_volume
        from acqflow.plugins.mr_muscle.evaluation import baseline_hu
        from acqflow.plugins.mr_muscle.translation import translate_volume

        models = self._require_models()
        if not isinstance(item, SeriesItem):
            raise InvalidInputError("mr-muscle takes a DICOM series, not an image")
        volume = series_to_volume(item.datasets, VolumeOptions(modalities=("MR",)))
        spacing = (volume.geometry.spacing[1], volume.geometry.spacing[2])
        try:
            if models.generator is None:
                hu = baseline_hu(volume.array, models.geometry.window, models.scale)
            else:
                hu = translate_volume(
                    models.generator, volume.array, spacing, models.scale,
                    item.hints.scaled(self._options.translation_batch),
                )
        except ValueError as exc:  # an all-zero series has no signal to normalise
            raise InvalidInputError(f"MR series cannot be normalised: {exc}") from exc
        content = content_digest(volume.datasets)
        # Seeded from what fixes the result, so a re-run gives the same samples.
        seed = mc_seed(self.name, content, self._generator_hash(), models.unet_card.sha256)
        prediction = predict_volume(
            models.unet, hu, spacing, models.geometry, self._options.mc(item.hints.batch_scale),
            seed=seed,
        )
        # No density: the synthetic CT's HU are a model's output, not a measurement.
        measured = measure_structures(
            prediction, models.table, volume.geometry.voxel_volume_mm3, self._options.threshold,
            score=self._options.score,
        )
        dicom = self._dicom_outputs(item, volume, content, prediction.labels, prediction.uncertainty,
                                    measured)
        if self._options.synthetic_ct_series:
            dicom += self._synthetic_ct(item, volume, hu)
        flagged = [m.name for m in measured if m.review_required]
        how = "via synthetic CT" if models.generator is not None else "by the contrast-agnostic network"
        summary = f"{len(measured)} structures segmented on MR {how}, {len(flagged)} flagged for review"
        if flagged:
            summary += ": " + ", ".join(flagged)
        return PipelineResult(
            dicom=dicom,
            records=self._records(item, measured),
            figures=structure_figures(self.name, measured),
            review_required=bool(flagged),
            summary=summary,
        )

    def _generator_hash(self) -> str:
        card = self._require_models().generator_card
        return card.sha256 if card is not None else "no-translation"

    def _require_models(self) -> _Models:
        if self._models is None:
            raise RuntimeError("mr-muscle pipeline used before load()")
        return self._models

    def _dicom_outputs(
        self,
        item: SeriesItem,
        volume: Volume,
        content: str,
        labels: np.ndarray,
        uncertainty: np.ndarray,
        measured: list[StructureMeasurement],
    ) -> list[DicomOutput]:
        from acqflow.plugins.ct_muscle.reporting import dicom_outputs
        from acqflow.plugins.mr_muscle.reporting import MrOutputContext, renamed

        models = self._require_models()
        context = MrOutputContext(
            identity=item.identity,
            pipeline_version=self.version,
            card=models.unet_card,
            table=models.table,
            measure=self._options.measure,
            review_threshold=self._options.threshold,
            content=content,
            options=(*self._options.content_options(), f"generator_weights={self._generator_hash()}"),
            generator_card=models.generator_card,
        )
        outputs = dicom_outputs(
            context, volume, labels, uncertainty, measured, labelmap=self._options.labelmap
        )
        return renamed(outputs)

    def _synthetic_ct(self, item: SeriesItem, volume: Volume, hu: np.ndarray) -> list[DicomOutput]:
        from acqflow.plugins.common.dicom_outputs import content_digest
        from acqflow.plugins.mr_muscle.synthetic_ct import SyntheticCtIdentity, build_synthetic_ct_series

        models = self._require_models()
        card = models.generator_card
        if card is None:
            raise RuntimeError("a synthetic CT series needs the synthetic-ct route")
        who = SyntheticCtIdentity(
            identity=item.identity,
            version=f"{self.version} model {card.version}",
            content=content_digest(volume.datasets),
        )
        series = build_synthetic_ct_series(volume, hu, who)
        return [DicomOutput(f"mr-muscle-synthetic-ct/{k + 1:04d}.dcm", ds) for k, ds in enumerate(series)]

    def _records(self, item: SeriesItem, measured: list[StructureMeasurement]) -> list[Record]:
        models = self._require_models()
        return [
            Record(
                kind="mr-structure",
                group=item.series_uid,
                fields={
                    "structure": m.key,
                    "label": m.label,
                    "volume_ml": round(m.volume_ml, 3),
                    "mean_uncertainty": m.mean_uncertainty,
                    "disagreement": m.disagreement,
                    "uncertainty_measure": self._options.measure.value,
                    "review_score": self._options.score.value,
                    "review_required": m.review_required,
                    "model_version": models.unet_card.version,
                    "translation_model_version": (models.generator_card.version
                                                  if models.generator_card else None),
                    "route": self._options.route.value,
                    "pipeline_version": self.version,
                },
            )
            for m in measured
        ]

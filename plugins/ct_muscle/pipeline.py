"""The ``ct-muscle`` pipeline: CT series in, SEG + uncertainty map + SR out.

Steps, each a separate function: series to volume (:mod:`acqflow.plugins.common.volume`),
MC-dropout inference (:mod:`acqflow.plugins.ct_muscle.inference`), per-structure measurements,
DICOM objects (:mod:`acqflow.plugins.common.dicom_outputs`), journal records and figures.
Construction is cheap; torch and highdicom are imported in :meth:`CtMusclePipeline.load`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from acqflow.plugins.api import (
    DicomOutput,
    Figure,
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    Record,
    SeriesItem,
)
from acqflow.plugins.ct_muscle.inference import (
    HuWindow,
    InputGeometry,
    McOptions,
    ReviewScore,
    StructureMeasurement,
    UncertaintyMeasure,
)

if TYPE_CHECKING:
    from acqflow.models.store import ModelCard
    from acqflow.models.unet import BayesianUNet
    from acqflow.plugins.common.volume import Volume
    from acqflow.plugins.ct_muscle.structures import LabelTable

__all__ = ["CtMuscleOptions", "CtMusclePipeline", "SegmentationOptions"]

PIPELINE_NAME = "ct-muscle"
PIPELINE_VERSION = "1.1.0"  # 1.1.0: body size normalisation (InputGeometry.body_size_px)

# Mean uncertainty inside a structure above which it is flagged for review. The entropy's
# is fitted for the demo weights 2.1.0: the best F1 for flagging structures with a Dice
# below 0.8 on held-out phantoms 900001000-019 (`acqflow evaluate ct-muscle --generator
# randomised --variety held-out --phantoms 20 --first-seed 900001000`), checked on
# 900002000-009; the variance's and mutual information's are still those fitted for 1.1.0.
# docs/models/ct-muscle.md has the figures. Recalibrate for other weights.
DEFAULT_REVIEW_THRESHOLDS = {
    UncertaintyMeasure.ENTROPY: 0.88,
    UncertaintyMeasure.VARIANCE: 0.18,
    UncertaintyMeasure.MUTUAL_INFORMATION: 0.43,
}
# Disagreement of the MC samples about a structure (1 - their mean Dice with the
# prediction) above which it is flagged, for the demo weights 2.1.0 with body size
# normalisation: the best F1 for flagging structures with a Dice below 0.8 on held-out
# phantoms 900001000-019 (0.233), checked on 900002000-009 (docs/models/ct-muscle.md,
# "Failure detection").
DEFAULT_DISAGREEMENT_THRESHOLD = 0.23


@dataclass(frozen=True)
class SegmentationOptions:
    """Options of the muscle segmentation pipelines (``context.options``, unknown keys
    are an error); ct-muscle and mr-muscle each add their own.

    ``review_score`` is what a structure is flagged by: ``disagreement`` (1 - the mean
    Dice of the MC samples' own segmentations with the prediction, 0..1) or
    ``uncertainty`` (the mean voxel uncertainty inside it, in the unit of ``measure``:
    nats for entropy and mutual information). ``review_threshold`` is in the unit of the
    score; when unset, the pipeline's calibrated default applies
    (:attr:`default_disagreement_threshold`, :attr:`default_review_thresholds`).
    """

    pipeline: ClassVar[str] = PIPELINE_NAME
    default_review_thresholds: ClassVar[Mapping[UncertaintyMeasure, float]] = DEFAULT_REVIEW_THRESHOLDS
    default_review_score: ClassVar[ReviewScore] = ReviewScore.DISAGREEMENT
    default_disagreement_threshold: ClassVar[float] = DEFAULT_DISAGREEMENT_THRESHOLD

    samples: int = 10
    measure: UncertaintyMeasure = UncertaintyMeasure.ENTROPY
    review_threshold: float | None = None
    batch_images: int | None = None
    labelmap: bool = False
    label_table: str | None = None
    review_score: ReviewScore | None = None  # None: default_review_score

    def __post_init__(self) -> None:
        object.__setattr__(self, "measure", UncertaintyMeasure(self.measure))
        try:
            score = ReviewScore(self.review_score or self.default_review_score)
        except ValueError as exc:
            choices = ", ".join(r.value for r in ReviewScore)
            raise ValueError(f"review_score must be one of {choices}") from exc
        object.__setattr__(self, "review_score", score)
        if self.review_threshold is None:
            object.__setattr__(self, "review_threshold", self.default_threshold())
        elif self.review_threshold < 0:
            raise ValueError("review_threshold must be >= 0")

    def default_threshold(self) -> float:
        """The calibrated threshold of :attr:`score` (and, by mean uncertainty, of ``measure``)."""
        if self.score is ReviewScore.DISAGREEMENT:
            return self.default_disagreement_threshold
        return self.default_review_thresholds[self.measure]

    @property
    def score(self) -> ReviewScore:
        """The review score in effect (never None after construction)."""
        return ReviewScore(self.review_score)

    @property
    def threshold(self) -> float:
        """The review threshold in effect (never None after construction)."""
        return float(self.review_threshold or 0.0)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> Self:
        """Options from the daemon's settings; raises ValueError for unknown keys."""
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.pipeline} options: {', '.join(sorted(unknown))}")
        return cls(**dict(options))

    def content_options(self) -> list[str]:
        """``name=value`` of the options that change the result (not the batch sizes,
        which only change how it is computed); they go into the result's UIDs."""
        return [f"samples={self.samples}", f"labelmap={self.labelmap}", f"review_score={self.score.value}"]

    def mc(self, batch_scale: float = 1.0) -> McOptions:
        return McOptions(samples=self.samples, measure=self.measure, batch_images=self.batch_images,
                         batch_scale=batch_scale)


@dataclass(frozen=True)
class CtMuscleOptions(SegmentationOptions):
    """ct-muscle's options: ``window_center``/``window_width`` override the model card's HU
    window; ``body_size_px`` overrides the card's body size normalisation (the body's size
    in model pixels, :class:`~acqflow.plugins.ct_muscle.inference.InputGeometry`) and
    ``size_normalisation = false`` turns it off (the card's fixed grid)."""

    window_center: float | None = None
    window_width: float | None = None
    size_normalisation: bool = True
    body_size_px: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.body_size_px is not None and self.body_size_px <= 0:
            raise ValueError("body_size_px must be positive")

    def geometry(self, card: InputGeometry) -> InputGeometry:
        """The card's input geometry with this window and size normalisation."""
        window = HuWindow(
            self.window_center if self.window_center is not None else card.window.center,
            self.window_width if self.window_width is not None else card.window.width)
        body = (None if not self.size_normalisation
                else self.body_size_px if self.body_size_px is not None else card.body_size_px)
        return InputGeometry(card.pixel_spacing_mm, window, card.divisor, body)


class CtMusclePipeline:
    """Hip/thigh muscle and bone segmentation of CT series with MC-dropout uncertainty."""

    name = PIPELINE_NAME
    version = PIPELINE_VERSION
    input_kind = InputKind.DICOM_SERIES

    def __init__(self) -> None:
        self._model: BayesianUNet | None = None
        self._card: ModelCard | None = None
        self._geometry = InputGeometry()
        self._options = CtMuscleOptions()
        self._table: LabelTable | None = None

    def load(self, context: PipelineContext) -> None:
        """Read options and load the weights once; raises ValueError for bad options and
        acqflow.models.store.WeightsError for missing or corrupt weights."""
        from acqflow.models.store import bundled_weights_dir
        from acqflow.plugins.ct_muscle.inference import load_model
        from acqflow.plugins.ct_muscle.structures import default_label_table, load_label_table

        options = CtMuscleOptions.from_mapping(context.options)
        table = (load_label_table(Path(options.label_table)) if options.label_table
                 else default_label_table())
        weights = context.weights_dir or bundled_weights_dir()
        model, card, geometry = load_model(weights, context.device, [s.key for s in table])
        self._model, self._card, self._geometry = model, card, options.geometry(geometry)
        self._options, self._table = options, table

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        """Segment one CT series; raises InvalidInputError for input that cannot work and
        RuntimeError when :meth:`load` has not run."""
        from acqflow.plugins.common.dicom_outputs import content_digest
        from acqflow.plugins.common.volume import VolumeOptions, series_to_volume
        from acqflow.plugins.ct_muscle.inference import mc_seed, measure_structures, predict_volume

        if self._model is None or self._card is None or self._table is None:
            raise RuntimeError("ct-muscle pipeline used before load()")
        if not isinstance(item, SeriesItem):
            raise InvalidInputError("ct-muscle takes a DICOM series, not an image")
        volume = series_to_volume(item.datasets, VolumeOptions(modalities=("CT",)))
        content = content_digest(volume.datasets)
        # Seeded from what fixes the result, so a re-run gives the same samples.
        seed = mc_seed(self.name, content, self._card.sha256, self._card.version)
        prediction = predict_volume(self._model, volume.array, volume.geometry.spacing[1:],
                                    self._geometry, self._options.mc(item.hints.batch_scale),
                                    seed=seed)
        measured = measure_structures(prediction, self._table,
                                      volume.geometry.voxel_volume_mm3,
                                      self._options.threshold, hu=volume.array,
                                      score=self._options.score)
        dicom = self._dicom_outputs(item, volume, content, prediction.labels,
                                    prediction.uncertainty, measured)
        flagged = [m.name for m in measured if m.review_required]
        summary = (f"{len(measured)} structures segmented, "
                   f"{len(flagged)} flagged for review" + (f": {', '.join(flagged)}"
                                                           if flagged else ""))
        return PipelineResult(
            dicom=dicom, records=self._records(item, measured),
            figures=structure_figures(self.name, measured), review_required=bool(flagged), summary=summary)

    def _dicom_outputs(
        self, item: SeriesItem, volume: Volume, content: str, labels: Any, uncertainty: Any,
        measured: list[StructureMeasurement],
    ) -> list[DicomOutput]:
        from acqflow.plugins.ct_muscle.reporting import OutputContext, dicom_outputs

        assert self._card is not None and self._table is not None
        window = self._geometry.window
        context = OutputContext(
            identity=item.identity, pipeline_version=self.version, card=self._card,
            table=self._table, measure=self._options.measure,
            review_threshold=self._options.threshold, content=content,
            options=(*self._options.content_options(),
                     f"window={window.center!r}/{window.width!r}",
                     f"body_size_px={self._geometry.body_size_px!r}"))
        return dicom_outputs(context, volume, labels, uncertainty, measured,
                             labelmap=self._options.labelmap)

    def _records(self, item: SeriesItem, measured: list[StructureMeasurement]) -> list[Record]:
        assert self._card is not None
        return [
            Record(kind="ct-structure", group=item.series_uid, fields={
                "structure": m.key, "label": m.label, "volume_ml": round(m.volume_ml, 3),
                "mean_uncertainty": m.mean_uncertainty, "disagreement": m.disagreement,
                "mean_hu": m.mean_hu, "low_attenuation_fraction": m.low_attenuation_fraction,
                "uncertainty_measure": self._options.measure.value,
                "review_score": self._options.score.value,
                "review_required": m.review_required,
                "model_version": self._card.version, "pipeline_version": self.version,
            })
            for m in measured
        ]


def structure_figures(pipeline: str, measured: Sequence[StructureMeasurement]) -> list[Figure]:
    """Per-structure mean uncertainty and review flag; labels never name a patient or study."""
    out: list[Figure] = []
    for m in measured:
        labels = {"pipeline": pipeline, "structure": m.key}
        out.append(Figure("structure_uncertainty", m.mean_uncertainty, labels))
        out.append(Figure("review_required", 1.0 if m.review_required else 0.0, labels))
    return out

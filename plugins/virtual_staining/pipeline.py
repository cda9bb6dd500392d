"""The virtual-staining pipeline: phase-contrast image in, virtual stain and efficiency out.

Per image (:meth:`VirtualStainingPipeline.run`): ``virtual_stain.tif`` (ImageJ hyperstack,
phase + cardiomyocyte probability, pixel size kept), ``overlay.png`` (RGB) and one
``Record(kind="efficiency")`` whose group is the experiment. No per-image figures: the
efficiency gauge is per well and comes from :meth:`VirtualStainingPipeline.summarize`,
which returns ``efficiency.csv``, ``efficiency.png``, ``report.html`` and one
``Figure("differentiation_efficiency", labels={"experiment", "well"})`` per well, plus,
with an efficiency forecast model (``efficiency_forecast.json`` beside the weights),
each well's forecast of its final-day efficiency in all three files and as figures
(see :mod:`acqflow.plugins.virtual_staining.forecast_summary`).

Options (``PipelineContext.options``): see :class:`VirtualStainingOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acqflow.plugins.api import (
    Figure,
    FileOutput,
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    Record,
    RecordValue,
    SeriesItem,
)
from acqflow.plugins.virtual_staining.forecast_options import ForecastOptions

if TYPE_CHECKING:
    from acqflow.models.store import ModelCard
    from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
    from acqflow.plugins.virtual_staining.forecast_summary import LoadedForecaster
    from acqflow.plugins.virtual_staining.inference import BlockPredictor, Prediction

__all__ = ["MODEL_NAME", "VirtualStainingOptions", "VirtualStainingPipeline"]

MODEL_NAME = "virtual_staining"
UNASSIGNED_EXPERIMENT = "unassigned"


@dataclass(frozen=True)
class VirtualStainingOptions:
    """Pipeline options; validates itself (raises ValueError).

    ``stride``: pixels between overlapping blocks of the probability map (default half a
    block). ``threshold``: block probability from which a block is positive (default: the
    decision threshold tuned on validation data, stored in the model card).
    ``tile_size``: side of one fully convolutional pass (memory bound only).
    ``phase_channel``: index or name of the phase channel in multi-channel files (default:
    a channel named like "phase"/"bf", or the only channel). ``overlay_alpha``: tint
    strength of the overlay. ``model``: weights name inside the weights folder.
    ``pixel_size_um``: the pixel size of images whose metadata carries none. Images are
    resampled to the scale the weights were trained at (their card's ``pixel_size_um``)
    before staining, and the stain is resampled back, so a 20x and a 4x acquisition of
    the same well give the same efficiency.
    ``forecast``: the efficiency forecast's table (:class:`ForecastOptions`).
    """

    stride: int | None = None
    threshold: float | None = None
    tile_size: int = 512  # the fastest measured on CPUs; the result does not depend on it
    phase_channel: str | int | None = None
    overlay_alpha: float = 0.5
    model: str = MODEL_NAME
    pixel_size_um: float | None = None
    forecast: ForecastOptions = field(default_factory=ForecastOptions)

    def __post_init__(self) -> None:
        for name in ("stride", "tile_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.phase_channel, str | int | None) or isinstance(self.phase_channel, bool):
            raise ValueError(f"phase_channel must be an index or a name, got {self.phase_channel!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        size = self.pixel_size_um
        if size is not None and (isinstance(size, bool) or not isinstance(size, int | float) or size <= 0):
            raise ValueError(f"pixel_size_um must be a positive number, got {size!r}")
        if not isinstance(self.forecast, ForecastOptions):
            raise ValueError(f"forecast must be a table of forecast options, got {self.forecast!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> VirtualStainingOptions:
        """Options from a plain mapping; raises ValueError on unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown virtual-staining options {unknown}; known: {sorted(known)}")
        values = dict(options)
        if "forecast" in values:
            values["forecast"] = ForecastOptions.from_mapping(values["forecast"])
        return cls(**values)


def _refuse_fluorescence(item: ImageItem) -> None:
    """Raise InvalidInputError for a single-channel image whose metadata names a fluorescence channel.

    The GFP images of a training acquisition often land in the same folder; staining them
    as if they were phase contrast would produce a meaningless efficiency.
    """
    from acqflow.plugins.virtual_staining.imaging import FLUORESCENCE_NAMES, PHASE_NAMES

    channel = (item.metadata.channel or "").lower()
    if not channel or any(a in item.axes.upper() for a in "CIQ"):
        return

    def named(names: Sequence[str]) -> bool:
        return any(channel == n or (len(n) > 2 and n in channel) for n in names)

    if named(FLUORESCENCE_NAMES) and not named(PHASE_NAMES):
        raise InvalidInputError(f"channel {item.metadata.channel!r} is fluorescence, not phase contrast")


class VirtualStainingPipeline:
    """Pipeline and Summarizer for phase-contrast images (entry point target)."""

    name = "virtual-staining"
    version = "2.0.0"  # 2: stained at the weights' pixel size, calibrated efficiency, forecast
    input_kind = InputKind.IMAGE

    def __init__(self) -> None:
        self._options = VirtualStainingOptions()
        self._predictor: BlockPredictor | None = None
        self._card: ModelCard | None = None
        self._scale: float | None = None  # um per pixel the weights work at
        self._calibration: EfficiencyCalibration | None = None
        self._forecaster: LoadedForecaster | None = None

    @property
    def card(self) -> ModelCard:
        """The model card of the loaded weights; raises RuntimeError before :meth:`load`."""
        if self._card is None:
            raise RuntimeError("virtual-staining pipeline used before load()")
        return self._card

    def load(self, context: PipelineContext) -> None:
        """Load weights from ``context.weights_dir`` or the bundled demo weights, and the
        efficiency forecast model from the same folder (none there: no forecast, a warning).

        Raises acqflow.models.store.WeightsError on missing, corrupt or mismatching weights (or an
        invalid forecast model) and ValueError on invalid options.
        """
        from acqflow.models.store import WeightsError, bundled_weights_dir, load_weights, read_card
        from acqflow.models.tile_cnn import TileCNN
        from acqflow.plugins.virtual_staining.calibration import EfficiencyCalibration
        from acqflow.plugins.virtual_staining.forecast_summary import load_forecaster
        from acqflow.plugins.virtual_staining.imaging import model_pixel_size
        from acqflow.plugins.virtual_staining.inference import BlockPredictor, InferenceOptions

        options = VirtualStainingOptions.from_mapping(context.options)
        directory = context.weights_dir or bundled_weights_dir()
        card = read_card(directory, options.model)
        if card.architecture != "acqflow.models.tile_cnn.TileCNN":
            raise WeightsError(f"{options.model} is a {card.architecture}, not a TileCNN")
        model = TileCNN(**card.arguments)
        load_weights(model, directory, options.model, device="cpu")
        tuned = card.training.get("inference", {}).get("threshold", 0.5)
        threshold = options.threshold if options.threshold is not None else float(tuned)
        settings = InferenceOptions(options.stride, threshold, options.tile_size)
        forecaster = load_forecaster(directory, options.forecast)
        self._predictor = BlockPredictor(model, context.device, settings)
        self._options, self._card, self._forecaster = options, card, forecaster
        self._calibration = EfficiencyCalibration.from_card(card.training.get("inference", {}))
        self._scale = model_pixel_size(card.training)

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        """Virtual stain, overlay and efficiency record of one image.

        Raises InvalidInputError for anything but a 2-D phase image (after channel
        selection; a single-channel image whose metadata channel is a fluorescence one,
        e.g. ``gfp``, is refused), RuntimeError before :meth:`load`.
        """
        from acqflow.plugins.virtual_staining.imaging import (
            PHASE_NAMES,
            rescale_plane,
            resize_map,
            select_plane,
        )
        from acqflow.plugins.virtual_staining.render import overlay_png, virtual_stain_tiff

        if not isinstance(item, ImageItem):
            raise InvalidInputError("virtual staining needs a microscope image, not a DICOM series")
        if self._predictor is None:
            raise RuntimeError("virtual-staining pipeline used before load()")
        _refuse_fluorescence(item)
        plane = select_plane(
            item.array, item.axes, item.channel_names, self._options.phase_channel, PHASE_NAMES
        )
        pixel_size = item.metadata.pixel_size_um
        if pixel_size is None and self._options.pixel_size_um is not None:
            pixel_size = (float(self._options.pixel_size_um),) * 2
        scaled = (
            plane
            if pixel_size is None or self._scale is None
            else rescale_plane(plane, pixel_size, self._scale)
        )
        prediction = self._predictor.predict(scaled)
        probability = resize_map(prediction.probability, plane.shape)
        files = [
            FileOutput(
                "virtual_stain.tif",
                virtual_stain_tiff(plane, probability, item.metadata.pixel_size_um),
                "image/tiff",
            ),
            FileOutput(
                "overlay.png",
                overlay_png(plane, probability, self._options.overlay_alpha),
                "image/png",
            ),
        ]
        record = self._record(item, prediction, plane.shape)
        summary = (
            f"{prediction.blocks_positive}/{prediction.blocks_total} blocks positive "
            f"({100 * prediction.positive_fraction:.1f}%)"
        )
        return PipelineResult(files=files, records=[record], summary=summary)

    def _efficiency(self, positive_fraction: float) -> float:
        return self._calibration.apply(positive_fraction) if self._calibration else positive_fraction

    def _record(self, item: ImageItem, prediction: Prediction, shape: tuple[int, ...]) -> Record:
        md = item.metadata
        source = Path(item.source_path)
        fields_: dict[str, RecordValue] = {
            "identity": item.identity,
            "source_name": source.name,
            # Relative to the watched folder when the daemon passes a relative path.
            "relative_path": source.as_posix() if not source.is_absolute() else source.name,
            "experiment": md.experiment,
            "plate": md.plate,
            "well": md.well,
            "position": md.position,
            "timepoint": md.timepoint,
            "acquired_at": md.acquired_at,
            "stage_x_um": md.stage_position_um[0] if md.stage_position_um else None,
            "stage_y_um": md.stage_position_um[1] if md.stage_position_um else None,
            "positive_fraction": prediction.positive_fraction,
            # The GFP-positive area the positive blocks stand for (the card's calibration).
            "efficiency": self._efficiency(prediction.positive_fraction),
            "blocks_total": prediction.blocks_total,
            "blocks_positive": prediction.blocks_positive,
            "mean_probability": float(prediction.probability.mean()),
            "block_size": prediction.block_size,
            "threshold": prediction.threshold,
            "height": int(shape[0]),
            "width": int(shape[1]),
            "model_pixel_size_um": self._scale,
            "model_version": self.card.version,
        }
        return Record(kind="efficiency", group=md.experiment or UNASSIGNED_EXPERIMENT, fields=fields_)

    def summarize(self, group: str, records: Sequence[Mapping[str, RecordValue]]) -> PipelineResult:
        """Time-course CSV, plot, HTML report and the latest efficiency gauge per well, with
        each well's forecast of its final-day efficiency when a forecast model is loaded.

        Raises ValueError when ``records`` is empty.
        """
        from acqflow.plugins.virtual_staining.forecast_summary import ForecastSummary, forecast_figures
        from acqflow.plugins.virtual_staining.summary import (
            efficiency_time_course,
            latest_per_well,
            provenance,
            report_html,
            time_course_csv,
            time_course_plot,
        )

        points = efficiency_time_course(records)
        forecast = None if self._forecaster is None else ForecastSummary.of(self._forecaster, group, points)
        plot = time_course_plot(group, points, forecast)
        files = [
            FileOutput("efficiency.csv", time_course_csv(group, points, forecast), "text/csv"),
            FileOutput("efficiency.png", plot, "image/png"),
            FileOutput("report.html", report_html(group, points, plot, forecast,
                                                  provenance(records, self.version)), "text/html"),
        ]
        figures = [
            Figure("differentiation_efficiency", point.efficiency, {"experiment": group, "well": well})
            for well, point in sorted(latest_per_well(points).items())
        ]
        wells = len(figures)
        forecasts = [] if forecast is None else forecast_figures(group, forecast, points)
        insufficient = sum(f.value for f in forecasts if f.name == "forecast_insufficient")
        summary = f"{wells} wells, {len(points)} time points"
        if forecast is not None:
            summary += f", {int(insufficient)} forecast insufficient"
        return PipelineResult(files=files, figures=[*figures, *forecasts], summary=summary)

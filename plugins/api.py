"""The contract between the daemon and a pipeline.

A pipeline is pure computation: it receives arrays and metadata (an :class:`ImageItem` for a
microscope image, a :class:`SeriesItem` for a DICOM series) and returns a
:class:`PipelineResult` holding files to write, DICOM datasets to export, records and
figures. It opens no sockets, writes no files and touches no metrics: the daemon owns
all I/O. Pipelines are discovered through the entry-point group ``acqflow.pipelines``;
the entry point names a class (or factory) that takes no arguments and is cheap to
construct, heavy imports happen in :meth:`Pipeline.load`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

__all__ = [
    "ENTRY_POINT_GROUP",
    "DicomOutput",
    "Figure",
    "FileOutput",
    "ImageItem",
    "ImageMetadata",
    "InputKind",
    "InvalidInputError",
    "Pipeline",
    "PipelineContext",
    "PipelineResult",
    "Record",
    "RunHints",
    "SeriesItem",
    "Summarizer",
]

ENTRY_POINT_GROUP = "acqflow.pipelines"

RecordValue = str | int | float | bool | None


class InputKind(str, Enum):
    """What a pipeline consumes."""

    IMAGE = "image"
    DICOM_SERIES = "dicom-series"


class InvalidInputError(ValueError):
    """The input can never be processed (wrong modality, gaps, localizer, corrupt pixels).

    The daemon quarantines the input and parks the job as dead without retrying.
    """


@dataclass(frozen=True)
class ImageMetadata:
    """Acquisition metadata of one microscope image; every field is optional."""

    experiment: str | None = None
    plate: str | None = None
    well: str | None = None
    position: str | None = None
    timepoint: int | None = None
    channel: str | None = None
    acquired_at: float | None = None  # seconds since the epoch
    pixel_size_um: tuple[float, float] | None = None  # (y, x)
    stage_position_um: tuple[float, float] | None = None  # (x, y) of the stage, as the file says

    def __post_init__(self) -> None:
        if self.timepoint is not None and self.timepoint < 0:
            raise ValueError(f"timepoint must be >= 0, got {self.timepoint}")
        if self.pixel_size_um is not None and not all(math.isfinite(v) and v > 0 for v in self.pixel_size_um):
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_um}")
        if self.stage_position_um is not None and not all(math.isfinite(v) for v in self.stage_position_um):
            raise ValueError(f"stage position must be finite, got {self.stage_position_um}")


@dataclass(frozen=True)
class RunHints:
    """How the daemon asks one run to use its device; pipelines may ignore a hint.

    ``batch_scale`` (0 < scale <= 1) multiplies a pipeline's inference batch sizes: the
    daemon lowers it when a run ran out of GPU memory and retries. A pipeline rounds the
    scaled batch down but never below one image.
    """

    batch_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 < self.batch_scale <= 1.0):
            raise ValueError(f"batch_scale must be in (0, 1], got {self.batch_scale}")

    def scaled(self, batch: int) -> int:
        """``batch`` times the scale, at least 1."""
        return max(1, int(batch * self.batch_scale))


@dataclass(frozen=True)
class ImageItem:
    """One image file, read by the daemon.

    ``array`` keeps the file's own axes (``axes`` in tifffile's notation, e.g. ``"YX"``,
    ``"CYX"``, ``"TCZYX"``); ``channel_names`` lists the C axis where known.
    ``identity`` is stable for the same input — a re-run or a rewritten file keeps it —
    and is the seed for deterministic names and UIDs, so results replace earlier ones.
    """

    identity: str
    source_path: Path
    array: np.ndarray
    axes: str
    metadata: ImageMetadata
    channel_names: tuple[str, ...] = ()
    hints: RunHints = RunHints()

    def __post_init__(self) -> None:
        if len(self.axes) != self.array.ndim:
            raise ValueError(f"axes {self.axes!r} do not match array of {self.array.ndim} dims")


@dataclass(frozen=True)
class SeriesItem:
    """One complete DICOM series, instances in arrival order (pipelines sort them)."""

    identity: str
    study_uid: str
    series_uid: str
    modality: str
    datasets: Sequence[Dataset]
    hints: RunHints = RunHints()

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("a series needs at least one instance")


@dataclass(frozen=True)
class FileOutput:
    """A file for the daemon to write atomically; ``name`` is relative (``"overlay.png"``)."""

    name: str
    data: bytes
    media_type: str = "application/octet-stream"

    def __post_init__(self) -> None:
        parts = Path(self.name).parts
        if not parts or Path(self.name).is_absolute() or ".." in parts:
            raise ValueError(f"output name must be a relative path inside the output folder: {self.name!r}")


@dataclass(frozen=True)
class DicomOutput:
    """A DICOM dataset to store in the outputs and export through the outbox."""

    name: str
    dataset: Dataset

    def __post_init__(self) -> None:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if keyword not in self.dataset:
                raise ValueError(f"DICOM output {self.name!r} lacks {keyword}")


@dataclass(frozen=True)
class Record:
    """A row for the journal's record table (e.g. an efficiency measurement).

    ``kind`` names the table-like family (``"efficiency"``); ``group`` is the key that
    summaries are computed over (e.g. the experiment).
    """

    kind: str
    group: str
    fields: Mapping[str, RecordValue]


@dataclass(frozen=True)
class Figure:
    """A number for the metrics endpoint; the daemon maps ``name`` to a metric it defines.

    Labels must have bounded cardinality and never carry patient or study identifiers.
    """

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    files: Sequence[FileOutput] = ()
    dicom: Sequence[DicomOutput] = ()
    records: Sequence[Record] = ()
    figures: Sequence[Figure] = ()
    review_required: bool = False
    summary: str = ""


@dataclass(frozen=True)
class PipelineContext:
    """What a pipeline gets at load time: nothing of the host beyond this."""

    device: str  # "cpu", "cuda", "cuda:1"
    options: Mapping[str, Any] = field(default_factory=dict)
    weights_dir: Path | None = None


@runtime_checkable
class Pipeline(Protocol):
    """A pipeline declares ``name``, ``version`` and ``input_kind`` as class attributes."""

    name: str
    version: str
    input_kind: InputKind

    def load(self, context: PipelineContext) -> None:
        """Load models once; raises on missing or corrupt weights."""

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        """Process one item; raises InvalidInputError for input that can never work."""
        ...


@runtime_checkable
class Summarizer(Protocol):
    """Optional: pipelines that aggregate records (time courses, reports) implement this.

    The daemon calls it after a job stored records of ``group`` (all records of that
    group and kind, oldest first, each with its ``recorded_at``), writes the returned files
    under the pipeline's summary folder for that group and publishes the figures.
    """

    def summarize(self, group: str, records: Sequence[Mapping[str, RecordValue]]) -> PipelineResult: ...

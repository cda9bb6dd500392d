"""The contract between the daemon and a pipeline.

A pipeline is pure computation: it receives arrays and metadata (an :class:`ImageItem` for a
microscope image, a :class:`SeriesItem` for a DICOM series) and returns a
:class:`PipelineResult` holding files to write, DICOM datasets to export, records and
figures. It opens no sockets, writes no files and touches no metrics: the daemon owns
all I/O. Pipelines are discovered through the entry-point group ``acqflow.pipelines``;
the entry point names a class (or factory) that takes no arguments and is cheap to
construct, heavy imports happen in :meth:`Pipeline.load`.

A plugin may also contribute to the command line, again through entry points, and the
daemon never imports a plugin module by name:

- ``acqflow.demos``: a :class:`DemoInput`, run as ``acqflow demo <name>``. It generates
  data the way an instrument produces it (files for a watched folder, or a DICOM series
  that the daemon's CLI sends by C-STORE) for the pipeline it names.
- ``acqflow.train`` and ``acqflow.evaluate``: a command function whose parameters carry
  ``typer.Option``/``typer.Argument`` annotations, run as ``acqflow train <name>`` or
  ``acqflow evaluate <name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from keyword import iskeyword
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

__all__ = [
    "DEMO_ENTRY_POINT_GROUP",
    "ENTRY_POINT_GROUP",
    "EVALUATE_ENTRY_POINT_GROUP",
    "RESERVED_DEMO_OPTIONS",
    "TRAIN_ENTRY_POINT_GROUP",
    "DemoFiles",
    "DemoInput",
    "DemoOption",
    "DemoValue",
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
DEMO_ENTRY_POINT_GROUP = "acqflow.demos"
TRAIN_ENTRY_POINT_GROUP = "acqflow.train"
EVALUATE_ENTRY_POINT_GROUP = "acqflow.evaluate"

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


DemoValue = int | float | str

RESERVED_DEMO_OPTIONS = frozenset({"config", "seed", "into", "interval", "calling_ae", "help"})
"""Option names the ``acqflow demo`` command line gives every demo itself."""

_COMMAND_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class DemoOption:
    """One option of a demo, given on the command line as ``--<name>`` (``_`` becomes ``-``).

    The default's type (``int``, ``float`` or ``str``) is the option's type. ``min`` and
    ``max`` bound a number (inclusive); ``choices`` closes a string option to a set of
    values. ``help`` is the option's line in ``acqflow demo <name> --help``.

    Raises ValueError when the name is not a Python identifier or is one of
    :data:`RESERVED_DEMO_OPTIONS`, the default is not an int, float or str, bounds are
    given for a string or choices for a number, or the default breaks its own bounds or
    choices.
    """

    name: str
    default: DemoValue
    help: str = ""
    min: int | float | None = None
    max: int | float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or iskeyword(self.name) or self.name.startswith("_"):
            raise ValueError(f"a demo option's name must be a Python identifier, got {self.name!r}")
        if self.name in RESERVED_DEMO_OPTIONS:
            raise ValueError(f"--{self.flag_name} is an option of every demo; pick another name")
        if isinstance(self.default, bool) or not isinstance(self.default, int | float | str):
            raise ValueError(f"--{self.flag_name}: the default must be an int, float or str, "
                             f"got {self.default!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        numeric = not isinstance(self.default, str)
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"--{self.flag_name}: min and max bound numbers, not text")
        if numeric and self.choices:
            raise ValueError(f"--{self.flag_name}: choices are for text options")
        if not all(isinstance(c, str) and c for c in self.choices) or len(set(self.choices)) < len(
            self.choices
        ):
            raise ValueError(f"--{self.flag_name}: choices must be distinct non-empty strings")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"--{self.flag_name}: min {self.min} is above max {self.max}")
        self.check(self.default)

    @property
    def flag_name(self) -> str:
        """The option as typed after ``--``: ``calling_ae`` is ``calling-ae``."""
        return self.name.replace("_", "-")

    @property
    def value_type(self) -> type[int] | type[float] | type[str]:
        """The type of the option's values: that of its default."""
        if isinstance(self.default, str):
            return str
        return int if isinstance(self.default, int) else float

    def check(self, value: object) -> DemoValue:
        """``value`` as the option's type; raises ValueError when it is of another type
        (an int is a float, never a bool), out of bounds or not one of the choices."""
        kind = self.value_type
        if isinstance(value, bool) or not isinstance(value, int | float if kind is float else kind):
            raise ValueError(f"--{self.flag_name} takes {kind.__name__} values, got {value!r}")
        checked: DemoValue = float(value) if kind is float else value
        if isinstance(checked, str):
            if self.choices and checked not in self.choices:
                raise ValueError(f"--{self.flag_name} is one of {', '.join(self.choices)}, got {checked!r}")
        elif self.min is not None and checked < self.min:
            raise ValueError(f"--{self.flag_name} must be >= {self.min}, got {checked}")
        elif self.max is not None and checked > self.max:
            raise ValueError(f"--{self.flag_name} must be <= {self.max}, got {checked}")
        return checked


def _inside(path: Path) -> bool:
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


@dataclass(frozen=True)
class DemoFiles:
    """What a file demo wrote into its staging folder, every path relative to it.

    ``feed``: the files for the watched folder in acquisition order. The daemon's CLI
    copies each to the same relative path under the folder, one by one (with a pause
    between), writing it under a temporary name and renaming it, as acquisition software
    does. ``keep``: companion files the daemon must not process, e.g. the fluorescence
    ground truth of generated phase images; they are copied to the same relative path
    under ``<state_dir>/demo/``. ``note`` says what the kept files are, for the user
    (``"fluorescence images (for training and evaluation)"``).

    Raises ValueError when there is nothing to feed, or a path is absolute, leaves the
    staging folder or is both fed and kept.
    """

    feed: Sequence[Path]
    keep: Sequence[Path] = ()
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "feed", tuple(Path(p) for p in self.feed))
        object.__setattr__(self, "keep", tuple(Path(p) for p in self.keep))
        if not self.feed:
            raise ValueError("a demo feeds at least one file")
        for path in (*self.feed, *self.keep):
            if not _inside(path):
                raise ValueError(f"demo files are relative paths inside the staging folder: {str(path)!r}")
        both = set(self.feed) & set(self.keep)
        if both:
            raise ValueError(f"fed and kept at once: {', '.join(sorted(map(str, both)))}")


@dataclass(frozen=True)
class DemoInput:
    """Demo data a plugin contributes: ``acqflow demo <name>`` generates it and feeds it to
    the running daemon the way an instrument would.

    ``summary`` is the one line shown in the listing (``acqflow demo``) and the command's
    help; ``pipeline`` names the pipeline the data are for. ``options`` become the
    command's options, beside those every demo has (``--config``, ``--seed``, and
    ``--into``/``--interval`` or ``--calling-ae``).

    Exactly one producer, both pure functions of the seed and the options (each option's
    name maps to its checked value):

    - ``write_files(staging, seed, options) -> DemoFiles`` writes files into the empty
      ``staging`` folder for a watched folder (microscopy and other instrument folders);
    - ``dicom_series(seed, options) -> Sequence[pydicom.Dataset]`` returns a series that
      the CLI sends to the daemon's DICOM port by C-STORE (CT, MR and other modalities).

    Import heavy generators inside the producer, so that listing demos stays fast.
    Raises ValueError when the name is not a command name (lower case, digits and inner
    hyphens), the summary is empty or more than one line, no pipeline is named, option
    names repeat, or there is not exactly one producer.
    """

    name: str
    summary: str
    pipeline: str
    options: Sequence[DemoOption] = ()
    write_files: Callable[[Path, int, Mapping[str, Any]], DemoFiles] | None = None
    dicom_series: Callable[[int, Mapping[str, Any]], Sequence[Dataset]] | None = None

    def __post_init__(self) -> None:
        if not _COMMAND_NAME.fullmatch(self.name):
            raise ValueError(f"a demo's name is a command name like 'ct' or 'live-cells', got {self.name!r}")
        if not self.summary.strip() or "\n" in self.summary.strip():
            raise ValueError(f"demo {self.name!r}: the summary is one line")
        if not self.pipeline:
            raise ValueError(f"demo {self.name!r}: name the pipeline the data are for")
        object.__setattr__(self, "options", tuple(self.options))
        names = [option.name for option in self.options]
        if len(set(names)) < len(names):
            raise ValueError(f"demo {self.name!r}: option names repeat: {names}")
        if (self.write_files is None) == (self.dicom_series is None):
            raise ValueError(f"demo {self.name!r}: give exactly one of write_files and dicom_series")

    @property
    def writes_files(self) -> bool:
        """True for a folder demo (``write_files``), False for a DICOM one."""
        return self.write_files is not None

    def resolve(self, given: Mapping[str, object]) -> dict[str, DemoValue]:
        """Every option's value: the given ones checked, the others their defaults.

        Raises ValueError for an option the demo does not have or a value its option refuses.
        """
        by_name = {option.name: option for option in self.options}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise ValueError(f"demo {self.name!r} has no option {', '.join(unknown)}")
        return {
            name: option.check(given[name]) if name in given else option.default
            for name, option in by_name.items()
        }

"""Settings: one TOML file, then ``ACQFLOW_*`` environment overrides, then CLI flags.

The tree is validated once at start and frozen; sub-sections are passed down
explicitly. An invalid value is a one-line :class:`ConfigError` naming the key, e.g.
``dicom.port: Input should be less than or equal to 65535 (got 70000)``.

Environment overrides use ``__`` between levels: ``ACQFLOW_DICOM__PORT=11113``,
``ACQFLOW_WORKERS__DEVICE=cuda``. Values are read as TOML values where they parse
(numbers, booleans, ``["a", "b"]``) and as strings otherwise.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from acqflow.daemon.errors import ConfigError

__all__ = [
    "DaskSettings",
    "DicomSettings",
    "DicomWebDestination",
    "DicomWebSettings",
    "DicomWebSource",
    "ExecutorKind",
    "ExportDestination",
    "ExportSettings",
    "FolderMode",
    "FolderSettings",
    "HealthSettings",
    "InputTransfer",
    "MetricsSettings",
    "PacsSource",
    "PathMapping",
    "PipelineSettings",
    "RetrieveMode",
    "RouteRule",
    "Settings",
    "SourceSettings",
    "WebAuth",
    "WebSettings",
    "WorkerSettings",
    "load_settings",
]

ENV_PREFIX = "ACQFLOW_"
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
Port = Annotated[int, Field(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_ae(value: str) -> str:
    if not AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"not a valid AE title (1-16 printable characters, no backslash): {value!r}")
    return value


class PathSettings(_Section):
    state_dir: Path = Path("var")
    outputs_dir: Path = Path("var/outputs")
    # Set by the daemon at start, so spool, journal and results are 0640/0750 even
    # without systemd's UMask=.
    umask: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = "0027"

    @property
    def umask_bits(self) -> int:
        return int(self.umask, 8)

    @property
    def journal(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool"

    @property
    def imports(self) -> Path:
        """Where ``acqflow import --copy`` puts its copies (``<series>/<sop>.dcm``)."""
        return self.state_dir / "imports"

    @property
    def quarantine(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def outbox(self) -> Path:
        return self.state_dir / "outbox"


class ExecutorKind(str, Enum):
    """Where pipelines run: the daemon's own threads, or a Dask distributed cluster."""

    LOCAL = "local"
    DASK = "dask"


class InputTransfer(str, Enum):
    """How a Dask worker gets a job's input files: it reads them where they are (a shared
    file system, paths mapped by ``path_map``), or the daemon ships their bytes."""

    SHARED = "shared"
    SHIP = "ship"


class PathMapping(_Section):
    """A folder of the daemon's (``daemon``) seen by the workers as ``worker``."""

    daemon: Path
    worker: str

    @field_validator("worker")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a worker path must be absolute, got {value!r}")
        return value


class DaskSettings(_Section):
    """``workers.executor = "dask"``: an existing scheduler, or a cluster the daemon starts."""

    scheduler: str | None = None  # "tcp://host:8786"
    # > 0: start a local cluster of this many worker processes (one per GPU with dask-cuda)
    local_workers: Annotated[int, Field(ge=0, le=256)] = 0
    connect_seconds: PositiveSeconds = 10.0
    # jobs submitted at once (each waits in one daemon thread for its result)
    in_flight: Annotated[int, Field(ge=1, le=1024)] = 16
    inputs: InputTransfer = InputTransfer.SHARED
    path_map: tuple[PathMapping, ...] = ()
    # each job asks for resources={"GPU": 1} (start workers with --resources GPU=1)
    gpu_resources: bool = False
    # the scheduler unreachable at start: run on local threads instead of refusing to start
    fallback_local: bool = False

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskSettings:
        if self.scheduler is not None and self.local_workers:
            raise ValueError("give either scheduler (an existing cluster) or local_workers, not both")
        if self.scheduler is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", self.scheduler):
            raise ValueError(f"scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")
        return self


class WorkerSettings(_Section):
    count: Annotated[int, Field(ge=1, le=64)] = 1
    executor: ExecutorKind = ExecutorKind.LOCAL
    dask: DaskSettings = DaskSettings()
    device: str = "auto"
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 8
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    retry_initial_seconds: PositiveSeconds = 5.0
    retry_max_seconds: PositiveSeconds = 600.0
    poll_seconds: PositiveSeconds = 1.0
    # runs cut off by the process ending (a kill, an OOM kill) before a job is parked
    max_interrupted_runs: Annotated[int, Field(ge=1, le=100)] = 3
    # SIGTERM: how long running jobs may finish before they go back to the queue
    drain_seconds: Annotated[float, Field(ge=0)] = 60.0
    # below this many free bytes on the state or outputs file system, jobs are held
    # and /readyz reports the disk as full
    min_free_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024
    disk_check_seconds: PositiveSeconds = 10.0
    # GPU out of memory: halve the batch this many times, then run on the CPU if allowed
    gpu_oom_retries: Annotated[int, Field(ge=0, le=8)] = 2
    gpu_oom_cpu_fallback: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", value):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")

    @model_validator(mode="after")
    def _dask_cluster(self) -> WorkerSettings:
        if self.executor is ExecutorKind.DASK and self.dask.scheduler is None and not self.dask.local_workers:
            raise ValueError("executor dask needs workers.dask.scheduler or workers.dask.local_workers")
        return self


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class HealthSettings(_Section):
    """The systemd watchdog's allowances (``/readyz`` takes its disk threshold from
    ``workers.min_free_bytes``: not ready exactly when jobs are held for space)."""

    # A loop (dispatcher, scheduler, folder watcher) silent this long is stuck.
    stall_seconds: PositiveSeconds = 120.0
    # A worker inside one job, or one model load, may take this long.
    busy_seconds: PositiveSeconds = 3600.0


class FolderMode(str, Enum):
    EVENTS = "events"  # inotify & co: close-after-write events
    POLLING = "polling"  # network shares: size/mtime stable for stable_seconds


class FolderSettings(_Section):
    path: Path
    recursive: bool = True
    mode: FolderMode = FolderMode.EVENTS
    stable_seconds: Annotated[float, Field(ge=0)] = 2.0
    # A file failing the header check is re-checked until unchanged this long (at least
    # stable_seconds), then rejected: a writer may pause mid-file.
    incomplete_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    poll_seconds: PositiveSeconds = 2.0
    rescan_seconds: PositiveSeconds = 60.0
    include: tuple[str, ...] = ("*.tif", "*.tiff", "*.ome.tif", "*.ome.tiff", "*.btf")
    naming: str = "auto"
    patterns: tuple[str, ...] = ()
    experiment: str | None = None
    # Symbolic links are taken only with follow_symlinks, and only when they lead to a
    # file inside the folder or inside one of symlink_roots.
    follow_symlinks: bool = False
    symlink_roots: tuple[Path, ...] = ()

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return value


class TlsSettings(_Section):
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


class DicomSettings(_Section):
    enabled: bool = True
    ae_title: str = "ACQFLOW"
    host: str = "127.0.0.1"
    port: Port = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()
    max_pdu: Annotated[int, Field(ge=0)] = 0
    max_associations: Annotated[int, Field(ge=1, le=256)] = 16
    max_connections_per_address: Annotated[int, Field(ge=1, le=4096)] = 32
    association_request_timeout_seconds: PositiveSeconds = 10.0
    max_command_set_bytes: Annotated[int, Field(ge=1024, le=16 << 20)] = 64 * 1024
    network_timeout_seconds: PositiveSeconds = 60.0
    series_quiet_seconds: Annotated[float, Field(ge=0)] = 10.0
    spool_slots: Annotated[int, Field(ge=0, le=65536)] = 512
    spool_slot_bytes: Annotated[int, Field(ge=8192, le=1 << 30, multiple_of=4096)] = 1 << 20
    tls: TlsSettings | None = None

    @field_validator("ae_title")
    @classmethod
    def _own_ae(cls, value: str) -> str:
        return _check_ae(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _callers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)


class DicomWebSettings(_Section):
    """The STOW-RS receiver: studies POSTed to ``http(s)://host:port<path>/studies``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8043
    path: Annotated[str, Field(pattern=r"^(/[A-Za-z0-9._~-]+)*$")] = "/dicom-web"
    max_request_bytes: Annotated[int, Field(ge=1 << 16)] = 8 << 30  # one POST (a large study)
    max_instance_bytes: Annotated[int, Field(ge=1 << 12)] = 2 << 30  # one part
    idle_seconds: PositiveSeconds = 60.0  # a client that sends nothing this long is cut off
    # "<client> <token>" per line; a POST must carry "Authorization: Bearer <token>".
    tokens_file: Path | None = None
    # Clients allowed to store (token names, or client certificate common names); empty:
    # every client that passes authentication (or any client without tokens or TLS).
    allowed_clients: tuple[str, ...] = ()
    tls: TlsSettings | None = None


class WebSettings(_Section):
    """The web console: plate, studies and operations views (read-only by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8044
    # "<user> <token>" per line; required (or TLS client certificates) off loopback. A
    # browser opens the console once with ?token=<token>, which sets a cookie.
    tokens_file: Path | None = None
    allow_actions: bool = False  # retry (dead jobs) and reprocess (series) buttons
    refresh_seconds: Annotated[float, Field(ge=1.0, le=3600.0)] = 3.0  # live views poll this often
    tls: TlsSettings | None = None

    @model_validator(mode="after")
    def _guarded_off_loopback(self) -> WebSettings:
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        certificates = self.tls is not None and self.tls.require_client_certificate
        if not loopback and self.tokens_file is None and not certificates:
            raise ValueError(f"host {self.host} is not loopback: set tokens_file or tls with "
                             "require_client_certificate first")
        return self


DestinationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class ExportDestination(_Section):
    """A DICOM node that takes results by C-STORE (``kind = "dimse"``, the default)."""

    name: DestinationName
    kind: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: Port
    calling_ae_title: str | None = None

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae(value)


class WebAuth(str, Enum):
    """How a DICOMweb destination is authenticated."""

    NONE = "none"
    BASIC = "basic"  # username + password
    BEARER = "bearer"  # an OAuth / API token


class DicomWebDestination(_Section):
    """A DICOMweb service that takes results by STOW-RS (``kind = "dicomweb"``).

    Secrets never sit in the settings file: the password or token is read, at each send,
    from a file (``password_file`` / ``token_file``, e.g. a systemd credential) or an
    environment variable (``password_env`` / ``token_env``).
    """

    name: DestinationName
    kind: Literal["dicomweb"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]  # the service root, e.g. .../dicom-web
    auth: WebAuth = WebAuth.NONE
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    token_file: Path | None = None
    token_env: str | None = None
    verify_tls: bool = True
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _credentials(self) -> DicomWebDestination:
        if self.auth is WebAuth.BASIC and (
            not self.username or (self.password_file is None) == (self.password_env is None)
        ):
            raise ValueError("auth = basic needs username and one of password_file, password_env")
        if self.auth is WebAuth.BEARER and (self.token_file is None) == (self.token_env is None):
            raise ValueError("auth = bearer needs one of token_file, token_env")
        if self.auth is WebAuth.NONE and any(
            v is not None for v in (self.username, self.password_file, self.password_env, self.token_file,
                                    self.token_env)
        ):
            raise ValueError("credentials given but auth is none: set auth = basic or bearer")
        return self


def _destination_kind(value: Any) -> str:
    kind = value.get("kind", "dimse") if isinstance(value, Mapping) else getattr(value, "kind", "dimse")
    return str(kind)


Destination = Annotated[
    Annotated[ExportDestination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class RetrieveMode(str, Enum):
    """How instances come back from a DIMSE PACS: C-MOVE to acqflow's own SCP (the PACS
    must know acqflow's AE title and address), or C-GET on the query's association."""

    MOVE = "move"
    GET = "get"


class PacsSource(ExportDestination):
    """A DIMSE PACS to query (C-FIND) and retrieve from (C-MOVE or C-GET)."""

    retrieve: RetrieveMode = RetrieveMode.MOVE
    move_destination: str | None = None  # the AE title the PACS sends to (default dicom.ae_title)

    @field_validator("move_destination")
    @classmethod
    def _destination_ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae(value)


class DicomWebSource(DicomWebDestination):
    """A DICOMweb service to query (QIDO-RS) and retrieve from (WADO-RS)."""


Source = Annotated[
    Annotated[PacsSource, Tag("dimse")] | Annotated[DicomWebSource, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class SourceSettings(_Section):
    """Where ``acqflow fetch`` (and ``reprocess`` of a purged series) gets studies from."""

    pacs: tuple[Source, ...] = ()
    retrieve_timeout_seconds: PositiveSeconds = 600.0  # a whole C-MOVE / C-GET / WADO-RS

    @model_validator(mode="after")
    def _unique(self) -> SourceSettings:
        _unique_names("source", [d.name for d in self.pacs])
        return self


class ExportSettings(_Section):
    destinations: tuple[Destination, ...] = ()
    retry_initial_seconds: PositiveSeconds = 5.0
    retry_max_seconds: PositiveSeconds = 600.0
    give_up_after_seconds: PositiveSeconds = 7 * 24 * 3600.0
    poll_seconds: PositiveSeconds = 1.0
    timeout_seconds: PositiveSeconds = 30.0

    @model_validator(mode="after")
    def _unique(self) -> ExportSettings:
        _unique_names("destination", [d.name for d in self.destinations])
        return self


def _unique_names(what: str, names: list[str]) -> None:
    if len(names) != len(set(names)):
        raise ValueError(f"{what} names must be unique: {names}")


class RouteRule(_Section):
    """First matching rule wins unless it sets ``continue``; unset fields match anything."""

    name: str
    source: tuple[str, ...] = ()  # folder, dicom, cli, import
    kind: tuple[str, ...] = ()  # image, dicom-series
    modality: tuple[str, ...] = ()
    calling_ae: tuple[str, ...] = ()
    channel: tuple[str, ...] = ()
    channel_not: tuple[str, ...] = ()  # channels this rule never matches (fluorescence)
    path_glob: str | None = None
    pipelines: tuple[str, ...]
    export: tuple[str, ...] = ()
    continue_matching: bool = Field(default=False, alias="continue")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("pipelines")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a route needs at least one pipeline")
        return value


class PipelineSettings(_Section):
    modules: tuple[str, ...] = ()  # extra "package.module:Class" pipelines
    disabled: tuple[str, ...] = ()
    # One folder for every pipeline, or a table {pipeline name: folder}; a pipeline the
    # table does not name keeps its bundled weights.
    weights_dir: Path | dict[str, Path] | None = None
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    preload: bool = True  # load every routed pipeline at start, not at its first job

    @field_validator("modules")
    @classmethod
    def _module_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ref in value:
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
                raise ValueError(f"pipeline module must look like 'package.module:Class', got {ref!r}")
        return value

    def weights_for(self, pipeline: str) -> Path | None:
        """The weights folder of ``pipeline``; None means its bundled weights."""
        if isinstance(self.weights_dir, dict):
            return self.weights_dir.get(pipeline)
        return self.weights_dir

    def weights_folders(self) -> dict[str, Path]:
        """Every configured folder, keyed by the setting that names it (for checks)."""
        if isinstance(self.weights_dir, dict):
            return {f"pipelines.weights_dir.{name}": path for name, path in self.weights_dir.items()}
        return {"pipelines.weights_dir": self.weights_dir} if self.weights_dir is not None else {}


class RetentionSettings(_Section):
    spool_days: Annotated[float, Field(gt=0)] = 30.0
    check_hours: PositiveSeconds = 6.0


# Fluorescence channels are labels for training, not inputs for virtual staining.
FLUORESCENCE_CHANNELS = ("gfp", "fitc", "fluorescence", "rfp", "tritc", "cy3", "cy5", "dapi", "mcherry")

DEFAULT_ROUTES: tuple[RouteRule, ...] = (
    RouteRule(
        name="microscopy",
        source=("folder", "cli"),
        kind=("image",),
        channel_not=FLUORESCENCE_CHANNELS,
        pipelines=("virtual-staining",),
    ),
    RouteRule(name="ct", kind=("dicom-series",), modality=("CT",), pipelines=("ct-muscle",)),
    RouteRule(name="mr", kind=("dicom-series",), modality=("MR",), pipelines=("mr-muscle",)),
)


class Settings(_Section):
    paths: PathSettings = PathSettings()
    workers: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    folders: tuple[FolderSettings, ...] = (FolderSettings(path=Path("var/inbox")),)
    dicom: DicomSettings = DicomSettings()
    dicomweb: DicomWebSettings = DicomWebSettings()
    web: WebSettings = WebSettings()
    export: ExportSettings = ExportSettings()
    sources: SourceSettings = SourceSettings()
    routes: tuple[RouteRule, ...] = DEFAULT_ROUTES
    pipelines: PipelineSettings = PipelineSettings()
    retention: RetentionSettings = RetentionSettings()
    health: HealthSettings = HealthSettings()
    log_level: Annotated[str, Field(pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")] = "INFO"
    log_format: Annotated[str, Field(pattern=r"^(text|json)$")] = "text"

    @model_validator(mode="after")
    def _routes_export_known(self) -> Settings:
        known = {d.name for d in self.export.destinations}
        for index, rule in enumerate(self.routes):
            for name in rule.export:
                if name not in known:
                    raise ValueError(f"routes[{index}] ({rule.name}) exports to unknown destination {name!r}")
        return self

    def source(self, name: str | None) -> PacsSource | DicomWebSource:
        """The ``[[sources.pacs]]`` entry ``name`` (the only one when None)."""
        if name is None:
            if len(self.sources.pacs) == 1:
                return self.sources.pacs[0]
            known = ", ".join(s.name for s in self.sources.pacs) or "none configured"
            raise ConfigError(f"sources.pacs: name the source with --source ({known})")
        for source in self.sources.pacs:
            if source.name == name:
                return source
        raise ConfigError(f"sources.pacs: no source named {name!r}")

    def destination(self, name: str) -> ExportDestination | DicomWebDestination:
        for dest in self.export.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(f"export.destinations: no destination named {name!r}")


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_dotted(data: dict[str, Any], dotted: list[str], value: Any) -> None:
    node = data
    for part in dotted[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[dotted[-1]] = value


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "ACQFLOW_CONFIG":
            continue
        dotted = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if dotted:
            _set_dotted(data, dotted, _parse_env_value(raw))
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    message = first["msg"].removeprefix("Value error, ")
    more = f" [+{error.error_count() - 1} more]" if error.error_count() > 1 else ""
    return f"{location}: {message}{shown}{more}"


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else (base / path)

    paths = settings.paths.model_copy(
        update={
            "state_dir": absolute(settings.paths.state_dir),
            "outputs_dir": absolute(settings.paths.outputs_dir),
        }
    )
    folders = tuple(f.model_copy(update={"path": absolute(f.path)}) for f in settings.folders)
    weights = settings.pipelines.weights_dir
    resolved: Path | dict[str, Path] | None
    if isinstance(weights, dict):
        resolved = {name: absolute(path) for name, path in weights.items()}
    else:
        resolved = absolute(weights) if weights else None
    pipelines = settings.pipelines.model_copy(update={"weights_dir": resolved})
    return settings.model_copy(update={"paths": paths, "folders": folders, "pipelines": pipelines})


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load file → environment → ``overrides`` (dotted keys from CLI flags) and validate.

    Relative paths are taken relative to the config file's folder (or the working folder
    when there is no file). Raises ConfigError with a one-line message naming the key.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get("ACQFLOW_CONFIG"):
        path = Path(environ["ACQFLOW_CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    data = _merge(data, _environment_overrides(environ))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted.split("."), value)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    base = path.resolve().parent if path is not None else Path.cwd()
    return _resolve_paths(settings, base)

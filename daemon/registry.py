"""Pipeline discovery and loading.

Pipelines are found through the entry-point group ``acqflow.pipelines`` (the entry
point's name is the pipeline's name) and through ``pipelines.modules`` in the settings
(``"package.module:Class"``). Nothing heavy is imported at discovery; a pipeline's
class is imported and its model loaded once and kept: ahead of time when the daemon
preloads the pipelines its routes name (``pipelines.preload``), otherwise on first use.
A pipeline that fails to import or load disables itself (logged, ``acqflow_pipeline_up``
0), not the daemon.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points

from acqflow.daemon import metrics
from acqflow.daemon.config import PipelineSettings
from acqflow.daemon.errors import PipelineLoadError
from acqflow.plugins.api import ENTRY_POINT_GROUP, Pipeline, PipelineContext

__all__ = ["PipelineDeclaration", "PipelineRegistry", "resolve_device"]

log = logging.getLogger(__name__)

Factory = Callable[[], Pipeline]


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when a CUDA device is usable, else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _import_ref(ref: str) -> Factory:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    factory: Factory = getattr(module, attr)
    return factory


@dataclass(frozen=True)
class PipelineDeclaration:
    """A pipeline's class attributes: its version, and whether it aggregates records."""

    name: str
    version: str
    summarizes: bool


@dataclass
class _Entry:
    name: str
    origin: str  # "entry point module:attr" or "settings module:attr"
    load_factory: Callable[[], Factory]
    instance: Pipeline | None = None
    error: str | None = None


class PipelineRegistry:
    def __init__(self, settings: PipelineSettings, device: str) -> None:
        self._settings = settings
        self._requested_device = device
        self._device: str | None = None
        self._entries: dict[str, _Entry] = {}
        self._on_device: dict[tuple[str, str], Pipeline] = {}
        self._lock = threading.Lock()
        self.on_change: Callable[[], None] | None = None
        """Called after every load attempt, from the loading thread (never under the lock)."""

    def discover(self) -> list[str]:
        """Find pipelines without importing them; returns their names."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._add(ep.name, f"entry point {ep.value}", ep.load)
        for ref in self._settings.modules:
            name = ref.rpartition(":")[2]
            self._add_from_ref(ref, name)
        return self.names()

    def _add_from_ref(self, ref: str, fallback_name: str) -> None:
        try:
            factory = _import_ref(ref)
        except (ImportError, AttributeError) as exc:
            log.error("pipeline module %s cannot be imported: %s", ref, exc)
            metrics.PIPELINE_UP.labels(fallback_name).set(0)
            return
        name = getattr(factory, "name", fallback_name)
        self._add(str(name), f"settings {ref}", lambda: factory)

    def _add(self, name: str, origin: str, load_factory: Callable[[], Factory]) -> None:
        if name in self._settings.disabled:
            log.info("pipeline %s is disabled in the settings", name)
            return
        if name in self._entries:
            log.warning("pipeline %s from %s shadows %s", name, origin, self._entries[name].origin)
        self._entries[name] = _Entry(name, origin, load_factory)

    def register(self, name: str, factory: Factory) -> None:
        """Register a pipeline in memory (tests, embedding applications)."""
        self._add(name, "registered in memory", lambda: factory)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        """Where the pipeline was found (entry point, settings module, or in memory)."""
        return self._entries[name].origin

    def available(self) -> list[str]:
        """Pipelines that are known and have not disabled themselves."""
        return sorted(n for n, e in self._entries.items() if e.error is None)

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self._requested_device)
        return self._device

    def describe(self) -> dict[str, str]:
        """name → "loaded", "not loaded yet" or the error that disabled it."""
        return {
            n: e.error or ("loaded" if e.instance is not None else "not loaded yet")
            for n, e in sorted(self._entries.items())
        }

    def get(self, name: str) -> Pipeline:
        """The loaded pipeline; loads it on first use. Raises PipelineLoadError."""
        attempted = False
        try:
            with self._lock:
                entry = self._entries.get(name)
                if entry is None:
                    raise PipelineLoadError(f"no pipeline named {name!r} (known: {', '.join(self.names())})")
                if entry.error is not None:
                    raise PipelineLoadError(f"pipeline {name} is disabled: {entry.error}")
                if entry.instance is None:
                    attempted = True
                    entry.instance = self._load(entry)
                return entry.instance
        finally:
            if attempted and self.on_change is not None:  # outside the lock
                try:
                    self.on_change()
                except Exception:  # a listener must not turn a load into a failure
                    log.exception("pipeline load listener failed")

    def declaration(self, name: str) -> PipelineDeclaration:
        """What ``name``'s class declares, without loading its model (its module is
        imported): for jobs that run on another machine. Raises PipelineLoadError."""
        entry = self._entries.get(name)
        if entry is None:
            raise PipelineLoadError(f"no pipeline named {name!r} (known: {', '.join(self.names())})")
        try:
            factory = entry.load_factory()
        except Exception as exc:  # a broken plugin fails its jobs, not the daemon
            raise PipelineLoadError(
                f"pipeline {name} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        version = getattr(factory, "version", None)
        if not isinstance(version, str):
            raise PipelineLoadError(f"pipeline {name} ({entry.origin}) declares no version")
        return PipelineDeclaration(name, version, summarizes=callable(getattr(factory, "summarize", None)))

    def get_on_device(self, name: str, device: str) -> Pipeline:
        """A second instance of ``name`` loaded on ``device`` (the GPU out-of-memory
        fallback runs on "cpu"), loaded once and kept. Its failure to load does not
        disable the pipeline. Raises PipelineLoadError."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise PipelineLoadError(f"no pipeline named {name!r}")
            key = (name, device)
            if key not in self._on_device:
                context = PipelineContext(
                    device=device,
                    options=dict(self._settings.options.get(name, {})),
                    weights_dir=self._settings.weights_for(name),
                )
                try:
                    pipeline = entry.load_factory()()
                    pipeline.load(context)
                except Exception as exc:  # the fallback fails alone; the pipeline stays up
                    raise PipelineLoadError(f"pipeline {name} failed to load on {device}: {exc}") from exc
                log.info("pipeline %s %s loaded on %s", name, pipeline.version, device)
                self._on_device[key] = pipeline
            return self._on_device[key]

    def preload(self, names: Iterable[str]) -> dict[str, str]:
        """Load each known pipeline of ``names`` now; returns name → describe() state.

        A pipeline that fails to load disables itself as it would at its first job
        (logged, ``acqflow_pipeline_up`` 0); preloading goes on with the next one.
        """
        wanted = [n for n in dict.fromkeys(names) if n in self._entries]
        for name in wanted:
            with contextlib.suppress(PipelineLoadError):  # logged and counted; the state says why
                self.get(name)
        states = self.describe()
        return {n: states[n] for n in wanted}

    def _load(self, entry: _Entry) -> Pipeline:
        context = PipelineContext(
            device=self.device,
            options=dict(self._settings.options.get(entry.name, {})),
            weights_dir=self._settings.weights_for(entry.name),
        )
        try:
            pipeline = entry.load_factory()()
            if pipeline.name != entry.name:
                raise PipelineLoadError(
                    f"{entry.origin} declares name {pipeline.name!r}, registered as {entry.name!r}"
                )
            pipeline.load(context)
        except Exception as exc:  # a broken plugin disables itself, not the daemon
            entry.error = f"{type(exc).__name__}: {exc}"
            metrics.PIPELINE_UP.labels(entry.name).set(0)
            log.exception("pipeline %s (%s) failed to load", entry.name, entry.origin)
            raise PipelineLoadError(f"pipeline {entry.name} failed to load: {entry.error}") from exc
        metrics.PIPELINE_UP.labels(entry.name).set(1)
        log.info("pipeline %s %s loaded on %s", entry.name, pipeline.version, context.device)
        return pipeline

"""Small pipelines for testing the core; registered by tests, never shipped.

``SeriesEcho`` derives one DICOM object from a series (the middle slice, re-identified
as a derived series with UIDs fixed by the input identity) so that export and
deduplication can be checked end to end. ``ImageStats`` measures an image. Both can be
told to fail through ``options["fail_marker"]`` — a file whose presence makes ``run``
raise — to exercise retries, to take time through ``options["delay_seconds"]`` to
exercise draining at shutdown, and to fail loading (as with missing weights) through
``options["fail_load"]``, the error message. ``options["oom_above_scale"]`` makes ``run``
raise an error named like torch's ``OutOfMemoryError`` while the run's batch scale is above
it, and ``options["oom_on_gpu"]`` whenever the pipeline was loaded on a CUDA device.
``options["kill_marker"]``: while that file exists, ``run`` kills its own process with
SIGKILL, as the kernel's OOM killer would. ``options["torch_busy_seconds"]`` keeps torch's
native thread pool computing that long, like a real model's inference.
``ImageStats``'s ``options["padding_bytes"]`` adds a ``padding.bin`` output of that many
bytes (a fixed pattern), so that writing the results takes long enough to kill it midway.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from acqflow.plugins.api import (
    DicomOutput,
    Figure,
    FileOutput,
    ImageItem,
    InputKind,
    InvalidInputError,
    PipelineContext,
    PipelineResult,
    Record,
    SeriesItem,
)

__all__ = ["ImageStats", "OutOfMemoryError", "SeriesEcho", "padding_pattern"]


def padding_pattern(size: int) -> bytes:
    """``size`` bytes of a fixed, non-constant pattern (a truncated copy shows)."""
    block = bytes(range(256)) * 4096  # 1 MiB
    return (block * (size // len(block) + 1))[:size]


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``, which the daemon recognises by name."""


class _Failing:
    options: dict[str, object]
    device: str

    def _configure(self, context: PipelineContext) -> None:
        self.options = dict(context.options)
        self.device = context.device
        reason = self.options.get("fail_load")
        if reason:
            raise FileNotFoundError(str(reason))

    def _maybe_fail(self, item: ImageItem | SeriesItem) -> None:
        kill = self.options.get("kill_marker")
        if kill and Path(str(kill)).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        if self.options.get("oom_on_gpu") and self.device.startswith("cuda"):
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        limit = self.options.get("oom_above_scale")
        if limit is not None and item.hints.batch_scale > float(str(limit)):
            raise OutOfMemoryError(f"CUDA out of memory at batch scale {item.hints.batch_scale}")
        time.sleep(float(str(self.options.get("delay_seconds", 0))))
        busy = float(str(self.options.get("torch_busy_seconds", 0)))
        if busy:
            import torch  # only where asked: the other tests stay light

            deadline = time.monotonic() + busy
            matrix = torch.randn(256, 256)
            while time.monotonic() < deadline:
                matrix = torch.tanh(matrix @ matrix)
        marker = self.options.get("fail_marker")
        if marker and Path(str(marker)).exists():
            raise RuntimeError(f"failing on purpose while {marker} exists")


class SeriesEcho(_Failing):
    name = "test-series"
    version = "1.0"
    input_kind = InputKind.DICOM_SERIES

    def load(self, context: PipelineContext) -> None:
        self._configure(context)

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        if not isinstance(item, SeriesItem):
            raise InvalidInputError("test-series takes DICOM series")
        self._maybe_fail(item)
        ordered = sorted(item.datasets, key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0))
        middle = copy.deepcopy(ordered[len(ordered) // 2])
        middle.SeriesInstanceUID = generate_uid(entropy_srcs=[item.identity, self.version, "series"])
        middle.SOPInstanceUID = generate_uid(entropy_srcs=[item.identity, self.version, "sop"])
        middle.file_meta.MediaStorageSOPInstanceUID = middle.SOPInstanceUID
        middle.SeriesDescription = "acqflow test result"
        middle.SeriesNumber = 9001
        middle.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        summary = {"instances": len(item.datasets), "modality": item.modality}
        return PipelineResult(
            files=(FileOutput("summary.json", json.dumps(summary).encode(), "application/json"),),
            dicom=(DicomOutput("middle", middle),),
            records=(Record("series", item.modality, {"instances": len(item.datasets)}),),
            figures=(Figure("instances", float(len(item.datasets))),),
            summary=f"{len(item.datasets)} instances",
        )


class ImageStats(_Failing):
    name = "test-image"
    version = "1.0"
    input_kind = InputKind.IMAGE

    def load(self, context: PipelineContext) -> None:
        self._configure(context)

    def run(self, item: ImageItem | SeriesItem) -> PipelineResult:
        if not isinstance(item, ImageItem):
            raise InvalidInputError("test-image takes images")
        self._maybe_fail(item)
        data = np.asarray(item.array, dtype=np.float64)
        stats = {
            "mean": float(data.mean()),
            "shape": list(item.array.shape),
            "axes": item.axes,
            "device": self.device,
            "batch_scale": item.hints.batch_scale,
        }
        metadata = item.metadata
        files = [FileOutput("stats.json", json.dumps(stats).encode(), "application/json")]
        padding = int(str(self.options.get("padding_bytes", 0)))
        if padding:
            files.append(FileOutput("padding.bin", padding_pattern(padding), "application/octet-stream"))
        return PipelineResult(
            files=tuple(files),
            records=(
                Record(
                    "stats",
                    metadata.experiment or "default",
                    {"well": metadata.well, "timepoint": metadata.timepoint, "mean": stats["mean"]},
                ),
            ),
            summary=f"mean {stats['mean']:.2f}",
        )

"""GPU metrics: device memory and utilisation, per-job peak memory, each pipeline's device.

Nothing here imports torch: the CUDA figures come from NVML (``nvidia-ml-py``) when it is
installed, else from torch only when the pipelines have already imported it. On a host
without a GPU no GPU gauge is exported at all (a 0 would read as an idle GPU).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from acqflow.daemon import metrics

__all__ = ["GpuSampler", "job_memory_peak", "record_pipeline_devices"]

log = logging.getLogger(__name__)


def _torch_cuda() -> Any | None:
    """torch.cuda when torch is already imported and a CUDA device is usable."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    # Another thread (a pipeline preload) may be importing torch right now: the module is
    # in sys.modules but half initialised. Not imported yet, as far as metrics go.
    if getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except (RuntimeError, AttributeError):  # a broken driver, or an import still running
        return None


def _nvml() -> ModuleType | None:
    try:
        module = importlib.import_module("pynvml")  # nvidia-ml-py, the "gpu" extra
    except ImportError:
        return None
    try:
        module.nvmlInit()
    except module.NVMLError:  # no driver or no device: no GPU as far as metrics go
        return None
    return module


class GpuSampler:
    """Samples ``acqflow_gpu_memory_used_bytes`` and ``acqflow_gpu_utilization_ratio``
    per device; call ``sample`` periodically (housekeeping)."""

    def __init__(self) -> None:
        self._nvml = _nvml()
        self._warned = False

    @property
    def present(self) -> bool:
        return self._nvml is not None or _torch_cuda() is not None

    def sample(self) -> int:
        """Update the gauges; returns how many devices were sampled (0 without a GPU)."""
        try:
            if self._nvml is not None:
                return self._sample_nvml(self._nvml)
            cuda = _torch_cuda()
            return self._sample_torch(cuda) if cuda is not None else 0
        except Exception:  # a sampling failure must not fail housekeeping every tick
            if not self._warned:
                log.warning("GPU metrics: sampling failed", exc_info=True)
                self._warned = True
            return 0

    @staticmethod
    def _sample_nvml(nvml: ModuleType) -> int:
        count = int(nvml.nvmlDeviceGetCount())
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            device = f"cuda:{index}"
            metrics.GPU_MEMORY_USED.labels(device).set(float(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            metrics.GPU_UTILIZATION.labels(device).set(float(rates.gpu) / 100.0)
        return count

    @staticmethod
    def _sample_torch(cuda: Any) -> int:
        count = int(cuda.device_count())
        for index in range(count):
            device = f"cuda:{index}"
            free, total = cuda.mem_get_info(index)
            metrics.GPU_MEMORY_USED.labels(device).set(float(total - free))
            with contextlib.suppress(Exception):  # torch reads utilisation through NVML only
                metrics.GPU_UTILIZATION.labels(device).set(float(cuda.utilization(index)) / 100.0)
        return count


@contextlib.contextmanager
def job_memory_peak(pipeline: str, device: Callable[[], str]) -> Iterator[None]:
    """Around one job: reset torch's peak-memory counter of ``device()`` and export the
    peak after it as ``acqflow_job_gpu_memory_peak_bytes{pipeline}``. A no-op on the CPU.

    With several workers on one device, the peak covers the jobs that overlapped.
    """
    cuda = _torch_cuda()  # None unless torch is imported: asks for the device only then
    where = device() if cuda is not None else "cpu"
    if cuda is None or not where.startswith("cuda"):
        yield
        return
    cuda.reset_peak_memory_stats(where)
    try:
        yield
    finally:
        metrics.JOB_GPU_MEMORY_PEAK.labels(pipeline).set(float(cuda.max_memory_allocated(where)))


def record_pipeline_devices(states: dict[str, str], device: str) -> None:
    """``acqflow_pipeline_device_info{pipeline,device}`` 1 for each loaded pipeline."""
    for pipeline, state in states.items():
        if state == "loaded":
            metrics.PIPELINE_DEVICE_INFO.labels(pipeline, device).set(1)

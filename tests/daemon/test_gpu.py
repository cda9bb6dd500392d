"""GPU metrics on a host without a GPU: no GPU gauge exported, the device info says cpu.

The CUDA paths (NVML, torch.cuda) cannot run here; the NVML one is exercised against a
stand-in module with NVML's interface, which checks our use of it, not the driver.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from acqflow.daemon import metrics
from acqflow.daemon.gpu import GpuSampler, job_memory_peak, record_pipeline_devices


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name
    }


@pytest.fixture(autouse=True)
def _clean_gauges() -> Iterator[None]:
    for gauge in (
        metrics.GPU_MEMORY_USED,
        metrics.GPU_UTILIZATION,
        metrics.JOB_GPU_MEMORY_PEAK,
        metrics.PIPELINE_DEVICE_INFO,
    ):
        gauge.clear()
    yield
    for gauge in (
        metrics.GPU_MEMORY_USED,
        metrics.GPU_UTILIZATION,
        metrics.JOB_GPU_MEMORY_PEAK,
        metrics.PIPELINE_DEVICE_INFO,
    ):
        gauge.clear()


def test_without_a_gpu_no_gpu_gauge_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    import torch  # what a pipeline has imported by the time jobs run

    assert not torch.cuda.is_available()
    sampler = GpuSampler()
    assert not sampler.present
    assert sampler.sample() == 0
    assert _samples("acqflow_gpu_memory_used_bytes") == {}
    assert _samples("acqflow_gpu_utilization_ratio") == {}


def test_nvidia_ml_py_without_a_driver_means_no_gpu() -> None:
    pytest.importorskip("pynvml")
    sampler = GpuSampler()  # the real NVML bindings: the library is not found on this host
    assert not sampler.present and sampler.sample() == 0
    assert _samples("acqflow_gpu_memory_used_bytes") == {}


def test_a_job_on_the_cpu_exports_no_gpu_peak() -> None:
    asked: list[str] = []
    with job_memory_peak("test-image", lambda: asked.append("device") or "cpu"):  # type: ignore[func-returns-value]
        pass
    assert _samples("acqflow_job_gpu_memory_peak_bytes") == {}


def test_device_info_names_loaded_pipelines_only() -> None:
    record_pipeline_devices({"test-image": "loaded", "ct-muscle": "FileNotFoundError: weights"}, "cpu")
    assert _samples("acqflow_pipeline_device_info") == {(("device", "cpu"), ("pipeline", "test-image")): 1.0}


def test_nvml_figures_become_gauges_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = ModuleType("pynvml")
    nvml.NVMLError = RuntimeError  # type: ignore[attr-defined]
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=(h + 1) * 1024**3)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=25 * (h + 1))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = GpuSampler()
    assert sampler.present and sampler.sample() == 2
    assert _samples("acqflow_gpu_memory_used_bytes") == {
        (("device", "cuda:0"),): float(1024**3),
        (("device", "cuda:1"),): float(2 * 1024**3),
    }
    assert _samples("acqflow_gpu_utilization_ratio") == {
        (("device", "cuda:0"),): 0.25,
        (("device", "cuda:1"),): 0.5,
    }


def test_torch_half_imported_by_another_thread_counts_as_not_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pipeline preload imports torch while a worker starts a job: the module is already
    # in sys.modules, without its attributes yet. That job failed to be recorded before.
    import importlib.machinery
    import sys
    import types

    from acqflow.daemon import gpu

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", half)
    assert gpu._torch_cuda() is None
    with gpu.job_memory_peak("virtual-staining", lambda: "cpu"):
        pass

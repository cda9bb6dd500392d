"""Every Prometheus metric of the daemon, defined once.

Names follow ``acqflow_<noun>_<unit>``; labels have bounded cardinality (pipeline,
source, outcome, destination, experiment/well) and never carry patient or study
identifiers.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ARRIVALS",
    "ARRIVAL_TO_RESULT",
    "ASSOCIATIONS",
    "CALLBACK_ERRORS",
    "CONNECTIONS_REFUSED",
    "DICOM_BYTES",
    "DICOM_INSTANCES",
    "DICOM_STORE_DURATION",
    "DIFFERENTIATION_EFFICIENCY",
    "DISK_FREE",
    "EXPORTS",
    "EXPORT_PENDING",
    "GPU_OOM",
    "INPUT_ERRORS",
    "JOBS",
    "JOBS_HELD",
    "JOB_DURATION",
    "PIPELINE_FIGURE",
    "PIPELINE_UP",
    "QUARANTINED",
    "QUEUE_DEPTH",
    "REVIEW_FLAGS",
    "SCHEDULED_TASK_FAILURES",
    "SERIES_COMPLETED",
    "SOURCE_ERRORS",
    "SPOOL_SLOTS_FREE",
    "SPOOL_SLOT_ERRORS",
    "UNROUTED",
    "serve_metrics",
]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

ARRIVALS = Counter(
    "acqflow_arrivals_total", "Inputs taken in (complete files, complete series)", ["source", "kind"]
)
INPUT_ERRORS = Counter(
    "acqflow_input_errors_total",
    "Inputs that could not be read or were refused",
    ["source", "reason"],
)
QUARANTINED = Counter("acqflow_quarantined_total", "Inputs moved or copied to quarantine", ["source"])
SOURCE_ERRORS = Counter(
    "acqflow_source_errors_total",
    "Unexpected errors caught inside a source's callbacks or threads (the source keeps running)",
    ["source", "stage"],
)
UNROUTED = Counter("acqflow_unrouted_total", "Arrivals that matched no route", ["source", "kind"])
DICOM_INSTANCES = Counter("acqflow_dicom_instances_total", "C-STORE requests by outcome", ["outcome"])
DICOM_BYTES = Counter("acqflow_dicom_received_bytes_total", "Bytes of DICOM instances stored")
ASSOCIATIONS = Counter("acqflow_dicom_associations_total", "Associations by outcome", ["outcome"])
CONNECTIONS_REFUSED = Counter(
    "acqflow_dicom_connections_refused_total",
    "DICOM connections closed or aborted at the network edge, by reason (address_limit, "
    "association_timeout, command_too_large, pdu_too_large)",
    ["reason"],
)
for _reason in ("address_limit", "association_timeout", "command_too_large", "pdu_too_large"):
    CONNECTIONS_REFUSED.labels(_reason)  # shown as 0 before the first one
SPOOL_SLOTS_FREE = Gauge(
    "acqflow_dicom_spool_slots_free",
    "Pre-written spool slots ready for incoming instances (each made durable with one flush)",
)
SPOOL_SLOT_ERRORS = Counter(
    "acqflow_dicom_spool_slot_errors_total",
    "Spool slots that could not be written ahead or put in place (the SCP falls back to new files)",
)
DICOM_STORE_DURATION = Histogram(
    "acqflow_dicom_store_duration_seconds",
    "C-STORE completion time in the SCP, from the last data set fragment to the response: "
    "durable spool write, journal commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
CALLBACK_ERRORS = Counter(
    "acqflow_callback_errors_total",
    "Exceptions caught (and logged) in callbacks of sources, assemblers and sinks",
    ["component"],
)
SERIES_COMPLETED = Counter("acqflow_series_completed_total", "Series declared complete", ["trigger"])
JOBS = Counter("acqflow_jobs_total", "Finished job attempts", ["pipeline", "outcome"])
QUEUE_DEPTH = Gauge("acqflow_queue_depth_jobs", "Jobs waiting or running", ["pipeline", "state"])
JOBS_HELD = Gauge(
    "acqflow_jobs_held",
    "Jobs held by a resource condition (disk_full, read_only): not attempted, not quarantined",
    ["reason"],
)
DISK_FREE = Gauge(
    "acqflow_disk_free_bytes",
    "Free bytes on the file system of each daemon folder (state, spool, outputs, outbox)",
    ["path"],
)
JOB_DURATION = Histogram(
    "acqflow_job_duration_seconds", "Pipeline run time per job", ["pipeline"], buckets=_LATENCY_BUCKETS
)
GPU_OOM = Counter(
    "acqflow_gpu_oom_total",
    "Runs that ran out of GPU memory, by what the worker did (smaller_batch, cpu, failed)",
    ["pipeline", "action"],
)
ARRIVAL_TO_RESULT = Histogram(
    "acqflow_arrival_to_result_seconds",
    "From the arrival being complete to its results written",
    ["pipeline"],
    buckets=_LATENCY_BUCKETS,
)
EXPORTS = Counter("acqflow_exports_total", "DICOM export attempts", ["destination", "outcome"])
EXPORT_PENDING = Gauge("acqflow_export_pending_objects", "Objects waiting in the outbox", ["destination"])
PIPELINE_UP = Gauge(
    "acqflow_pipeline_up",
    "0 when a pipeline disabled itself (its code or model failed to load), else 1",
    ["pipeline"]
)
REVIEW_FLAGS = Counter("acqflow_review_flags_total", "Results flagged for human review", ["pipeline"])
DIFFERENTIATION_EFFICIENCY = Gauge(
    "acqflow_differentiation_efficiency",
    "Latest predicted cardiomyocyte fraction per experiment and well",
    ["experiment", "well"],
)
SCHEDULED_TASK_FAILURES = Counter(
    "acqflow_scheduled_task_failures_total", "Housekeeping task runs that raised", ["task"]
)
PIPELINE_FIGURE = Gauge(
    "acqflow_pipeline_figure", "Latest value of a pipeline figure", ["pipeline", "figure", "label"]
)


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Start the HTTP endpoint in a daemon thread; returns the bound port (0 picks one)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])

"""Series assembly: when is a DICOM series received by the SCP complete?

A series (one arrival, key ``series:<SeriesInstanceUID>``) stays RECEIVING while
instances arrive and becomes READY:

- **quiet**: no instance arrived for ``quiet_seconds`` (checked by the scheduler every
  second), whatever the state of the associations; or
- **association**: earlier, when an association that carried it is released (or
  aborted, or its connection closed) and the series is *consistent*.

*Consistent* means: no other open association carries instances of the series, every
instance has an InstanceNumber, and the InstanceNumbers are exactly 1..N for N
instances (no gaps, no duplicates). A single multi-frame instance (Enhanced CT/MR) with
InstanceNumber 1 is consistent. Anything else waits for the quiet time.

A late instance re-opens a READY (or routed) series: the journal gives it a new
generation and supersedes its pending jobs (see :meth:`Journal.record_instance`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from acqflow.daemon import metrics
from acqflow.daemon.journal import Arrival, ArrivalState, Instance, Journal

__all__ = ["SeriesAssembler", "is_consistent"]

LOG = logging.getLogger(__name__)


def is_consistent(instances: Sequence[Instance]) -> bool:
    """True when the InstanceNumbers are exactly 1..N for the N instances."""
    numbers = [i.instance_number for i in instances]
    if not numbers or any(n is None for n in numbers):
        return False
    return sorted(n for n in numbers if n is not None) == list(range(1, len(numbers) + 1))


class SeriesAssembler:
    """Moves DICOM series from RECEIVING to READY; ``on_ready`` wakes the router."""

    def __init__(self, journal: Journal, quiet_seconds: float, on_ready: Callable[[], None]) -> None:
        if quiet_seconds < 0:
            raise ValueError(f"quiet_seconds must be >= 0, got {quiet_seconds}")
        self.journal = journal
        self.quiet_seconds = quiet_seconds
        self.on_ready = on_ready
        # Waits until the instance files just received are final (DicomReceiver.settle);
        # False: not yet, the series is completed at a later check.
        self.settle: Callable[[], bool] = lambda: True
        self._lock = threading.Lock()  # the scheduler and SCP threads both call in

    def check(self, now: float | None = None) -> int:
        """Mark every series quiet for ``quiet_seconds`` READY; returns how many.

        Never raises: journal errors are logged and counted (the next check retries).
        """
        now = time.time() if now is None else now
        ready = 0
        try:
            with self._lock:
                for arrival in self.journal.arrivals_in_state(ArrivalState.RECEIVING):
                    if arrival.kind == "dicom-series" and self._quiet(arrival, now):
                        ready += self._complete(arrival, "quiet")
        except Exception:
            LOG.exception("series quiet check failed")
            metrics.CALLBACK_ERRORS.labels("series").inc()
        self._notify(ready)
        return ready

    def association_closed(self, arrival_ids: list[int]) -> None:
        """Complete the series an ended association carried, where consistent.

        Never raises: errors are logged and counted; the quiet timer still applies.
        """
        ready = 0
        for arrival_id in arrival_ids:
            try:
                with self._lock:
                    ready += self._complete_if_consistent(arrival_id)
            except Exception:
                LOG.exception("series completion on association close failed (arrival %d)",
                              arrival_id)
                metrics.CALLBACK_ERRORS.labels("series").inc()
        self._notify(ready)

    def _quiet(self, arrival: Arrival, now: float) -> bool:
        last = arrival.last_instance_at if arrival.last_instance_at is not None else arrival.updated_at
        return now - last >= self.quiet_seconds

    def _complete_if_consistent(self, arrival_id: int) -> int:
        arrival = self.journal.arrival(arrival_id)
        if arrival.state is not ArrivalState.RECEIVING or arrival.kind != "dicom-series":
            return 0
        if self.journal.series_has_open_association(arrival_id):
            LOG.debug("series arrival %d: another association still open", arrival_id)
            return 0
        instances = self.journal.instances(arrival_id)
        if not is_consistent(instances):
            LOG.info("series arrival %d: %d instance(s) not numbered 1..N; waiting %.0f s quiet",
                     arrival_id, len(instances), self.quiet_seconds)
            return 0
        return self._complete(arrival, "association")

    def _complete(self, arrival: Arrival, trigger: str) -> int:
        if not self.settle():
            LOG.warning("series arrival %d: instance files not final yet; completing later", arrival.id)
            return 0
        if not self.journal.mark_series_ready_if_quiet(
            arrival.id, arrival.generation, arrival.last_instance_at
        ):
            return 0  # an instance arrived meanwhile: still receiving
        count = len(self.journal.instances(arrival.id))
        LOG.info("series arrival %d (generation %d, %d instance(s), modality %s) complete: %s",
                 arrival.id, arrival.generation, count, arrival.attrs.get("modality", "?"), trigger)
        metrics.SERIES_COMPLETED.labels(trigger).inc()
        metrics.ARRIVALS.labels("dicom", "dicom-series").inc()
        return 1

    def _notify(self, ready: int) -> None:
        if not ready:
            return
        try:
            self.on_ready()
        except Exception:
            LOG.exception("on_ready callback failed after %d series became ready", ready)
            metrics.CALLBACK_ERRORS.labels("series").inc()

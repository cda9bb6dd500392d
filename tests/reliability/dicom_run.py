"""Delivering a DICOM case by C-STORE and observing what the daemon made of it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.reliability.corpus import Case, Outcome
from tests.reliability.dicom_inputs import DicomDelivery, Instance
from tests.reliability.harness import (
    DECISION_SECONDS,
    Observation,
    Snapshot,
    decide,
    good_series_processed,
    judge,
    log_since,
    metric_delta,
    quarantine_entries,
    wait_for,
)
from tests.support.daemon_proc import DaemonProcess, journal_rows
from tests.support.raw_dicom import PduReply, RawPeer

__all__ = ["CALLING_AE", "run_dicom_case", "send"]

CALLING_AE = "CORPUS"
Status = tuple[int | None, str]  # (status or None when not answered, comment / why)


def _status(answer: Dataset | PduReply) -> Status:
    if isinstance(answer, PduReply):
        return None, "connection closed" if answer.closed else f"PDU 0x{answer.pdu_type:02X} instead"
    return int(answer.Status), str(answer.get("ErrorComment", ""))


def _send_raw(delivery: DicomDelivery, instances: tuple[Instance, ...], port: int) -> list[Status]:
    with RawPeer(port) as peer:
        contexts = [(c, delivery.syntaxes) for c in delivery.sop_classes]
        reply = peer.associate(contexts, calling_ae=CALLING_AE)
        if reply.pdu_type != 2:
            return [(None, f"association not accepted (PDU {reply.pdu_type})")] * len(instances)
        statuses: list[Status] = []
        for number, instance in enumerate(instances, 1):
            if instance.sop_class not in peer.contexts:
                statuses.append((None, "presentation context rejected (SOP class / transfer syntax)"))
                continue
            statuses.append(
                _status(peer.store(instance.sop_class, instance.sop_uid, instance.data, message_id=number))
            )
        peer.release()
        return statuses


def _send_pynetdicom(delivery: DicomDelivery, instances: tuple[Instance, ...], port: int) -> list[Status]:
    ae = AE(ae_title=CALLING_AE)
    for sop_class in delivery.sop_classes:
        ae.add_requested_context(sop_class, list(delivery.syntaxes))
    association = ae.associate("127.0.0.1", port, ae_title="ACQFLOW")
    if not association.is_established:
        return [(None, "association not established")] * len(instances)
    statuses: list[Status] = []
    try:
        for instance in instances:
            with warnings.catch_warnings():  # invalid values are the point here
                warnings.simplefilter("ignore")
                answer = association.send_c_store(instance.dataset)
            statuses.append(
                (int(answer.Status), str(answer.get("ErrorComment", "")))
                if "Status" in answer
                else (None, "no response")
            )
    finally:
        association.release()
    return statuses


def send(delivery: DicomDelivery, port: int, instances: tuple[Instance, ...] | None = None) -> list[Status]:
    """C-STORE the delivery's instances on one association; one status per instance."""
    chosen = delivery.instances if instances is None else instances
    if delivery.peer == "raw":
        return _send_raw(delivery, chosen, port)
    return _send_pynetdicom(delivery, chosen, port)


def _arrival(daemon: DaemonProcess, series_uid: str) -> object:
    rows = journal_rows(daemon, "SELECT * FROM arrivals WHERE key = ?", ("series:" + series_uid,))
    return rows[0] if rows else None


def _seg_uid(daemon: DaemonProcess, arrival_id: int) -> str:
    rows = journal_rows(
        daemon,
        "SELECT o.path FROM outputs o JOIN jobs j ON o.job_id = j.id "
        "WHERE j.arrival_id = ? AND o.kind = 'dicom' ORDER BY o.id DESC",
        (arrival_id,),
    )
    if not rows or not Path(rows[0]["path"]).exists():
        return ""
    return str(pydicom.dcmread(rows[0]["path"], stop_before_pixels=True).SOPInstanceUID)


def _wait_decided(daemon: DaemonProcess, series_uid: str, observation: Observation) -> None:
    def decided() -> bool:
        arrival = _arrival(daemon, series_uid)
        return arrival is not None and decide(daemon, arrival, observation)  # type: ignore[arg-type]

    if not wait_for(decided, DECISION_SECONDS, 0.2):
        arrival = _arrival(daemon, series_uid)
        state = "no arrival" if arrival is None else f"arrival {arrival['state']}"  # type: ignore[index]
        observation.outcome, observation.error = (
            "undecided",
            f"not decided in {DECISION_SECONDS:g} s ({state})",
        )


def _check_distinct(
    daemon: DaemonProcess, delivery: DicomDelivery, statuses: list[Status], observation: Observation
) -> None:
    """Every acknowledged instance on its own path, holding its own SOP Instance UID."""
    acked = [i.sop_uid for i, (status, _) in zip(delivery.instances, statuses, strict=True) if status == 0]
    rows = {r["sop_instance_uid"]: r["path"] for r in journal_rows(daemon, "SELECT * FROM instances")}
    problems = [f"acknowledged {uid!r} has no journal row" for uid in acked if uid not in rows]
    paths = [rows[uid] for uid in acked if uid in rows]
    if len(set(paths)) != len(paths):
        problems.append(
            f"{len(paths)} acknowledged instances on {len(set(paths))} path(s): {sorted(set(paths))}"
        )
    for uid in acked:
        if uid in rows and Path(rows[uid]).exists():
            found = str(pydicom.dcmread(rows[uid], stop_before_pixels=True, force=True).SOPInstanceUID)
            if found != uid:
                problems.append(f"the file of {uid!r} holds {found!r} (overwritten)")
    refused = [s for s in statuses if s[0] not in (0, None)]
    observation.notes.append(f"{len(acked)} acknowledged, {len(refused)} refused")
    observation.error = "; ".join(c for _, c in refused if c)
    observation.outcome = Outcome.DISTINCT.value if not problems else "overwritten"
    observation.failures.extend(problems)


def _check_reopened(daemon: DaemonProcess, delivery: DicomDelivery, observation: Observation) -> None:
    arrival = _arrival(daemon, delivery.series_uid)
    first_uid = _seg_uid(daemon, arrival["id"]) if arrival is not None else ""  # type: ignore[index]
    send(delivery, daemon.state["dicom_port"], delivery.later)
    wait_for(lambda: (a := _arrival(daemon, delivery.series_uid)) is not None and a["generation"] >= 1, 10)  # type: ignore[index]
    _wait_decided(daemon, delivery.series_uid, observation)
    second_uid = _seg_uid(daemon, arrival["id"]) if arrival is not None else ""  # type: ignore[index]
    observation.notes.append(f"result SOP Instance UIDs {first_uid} then {second_uid}")
    if not first_uid or first_uid == second_uid:
        observation.failures.append(
            "the re-opened series' result kept the first generation's SOP Instance UID"
        )


def run_dicom_case(daemon: DaemonProcess, root: Path, case: Case, delivery: DicomDelivery) -> Observation:
    """Deliver ``case``, observe the decision, send a good series, judge."""
    observation = Observation(case.id)
    before = Snapshot.take(daemon)
    statuses = send(delivery, daemon.state["dicom_port"])
    observation.notes.append(
        "statuses " + ", ".join("none" if s is None else f"0x{s:04X}" for s, _ in statuses)
    )
    comments = " ".join(c for _, c in statuses if c)
    if case.outcome is Outcome.DISTINCT:
        _check_distinct(daemon, delivery, statuses, observation)
    elif not any(status == 0 for status, _ in statuses):
        observation.outcome, observation.error = Outcome.REFUSED.value, comments
        if _arrival(daemon, delivery.series_uid) is not None:
            observation.failures.append("a refused instance has a journal row")
    else:
        _wait_decided(daemon, delivery.series_uid, observation)
        if delivery.later and observation.outcome == Outcome.PROCESSED.value:
            _check_reopened(daemon, delivery, observation)
    observation.metric_delta = metric_delta(daemon, before, case)
    logged = log_since(daemon, before.log_offset)
    observation.good_after = good_series_processed(daemon, root, case.id)
    observation.quarantined = len(quarantine_entries(daemon) - before.quarantine)
    if case.outcome is Outcome.PROCESSED:
        mention_text = logged
    elif observation.outcome == Outcome.REFUSED.value:
        mention_text = observation.error or logged  # the status comment, else the log line
    else:
        mention_text = observation.error
    observation.failures = judge(case, observation, mention_text)
    return observation

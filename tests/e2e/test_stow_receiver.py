"""The STOW-RS receiver of a real ``acqflow serve``: studies POSTed by dicomweb-client and
by curl are assembled into one series and processed once; what was answered is never
lost to a ``kill -9``; bad requests get a 4xx and the daemon keeps serving."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.support.daemon_proc import TEST_PIPELINES, DaemonProcess, journal_rows, wait_until
from tests.support.peers import LOOPBACK, free_port, write_synthetic_ct

pytestmark = pytest.mark.integration

BOUNDARY = "acqflow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _settings(root: Path, **dicomweb: Any) -> dict[str, Any]:
    return {
        "paths": {"state_dir": str(root / "state"), "outputs_dir": str(root / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port(), "series_quiet_seconds": 30.0},
        "dicomweb": {"enabled": True, "port": free_port(), **dicomweb},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }


def _url(daemon: DaemonProcess) -> str:
    return f"http://{LOOPBACK}:{daemon.settings['dicomweb']['port']}/dicom-web"


def _body(paths: list[Path]) -> bytes:
    parts = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
             for p in paths]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _post(daemon: DaemonProcess, body: bytes, content_type: str = CONTENT_TYPE,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(LOOPBACK, daemon.settings["dicomweb"]["port"], timeout=60)
    try:
        connection.request("POST", "/dicom-web/studies", body=body,
                           headers={"Content-Type": content_type, **(headers or {})})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(payload) if payload else None
    except ValueError:
        return response.status, payload


def _expect_continue(daemon: DaemonProcess, length: int, headers: dict[str, str]) -> bytes:
    """Headers of a POST of ``length`` bytes with ``Expect: 100-continue`` and no body
    yet (what curl does for a large one): the answer's first line and headers."""
    import socket

    with socket.create_connection((LOOPBACK, daemon.settings["dicomweb"]["port"]), timeout=10) as sock:
        lines = ["POST /dicom-web/studies HTTP/1.1", f"Host: {LOOPBACK}", f"Content-Type: {CONTENT_TYPE}",
                 f"Content-Length: {length}", "Expect: 100-continue",
                 *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(4096)


def _chunked_until_answered(daemon: DaemonProcess, length: int, headers: dict[str, str]) -> bytes:
    """A chunked POST of up to ``length`` bytes, sent until the daemon answers."""
    import select
    import socket

    with socket.create_connection((LOOPBACK, daemon.settings["dicomweb"]["port"]), timeout=10) as sock:
        lines = ["POST /dicom-web/studies HTTP/1.1", f"Host: {LOOPBACK}", f"Content-Type: {CONTENT_TYPE}",
                 "Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()  # then one huge part
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        for _ in range(length // 65536):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
        select.select([sock], [], [], 10)
        return sock.recv(4096)


def _series_done(daemon: DaemonProcess, count: int) -> bool:
    jobs = journal_rows(daemon, "SELECT state FROM jobs")
    return len(jobs) == count and all(j["state"] == "done" for j in jobs)


def test_a_300_instance_series_from_dicomweb_client_and_curl_is_processed_once(tmp_path: Path) -> None:
    """One POST per series, from dicomweb-client and from curl: each series is complete
    when its POST ends (long before the 60 s quiet time) and processed once; the same
    instances again are answered as stored and change nothing."""
    from dicomweb_client import DICOMwebClient

    first = write_synthetic_ct(tmp_path / "a", n_slices=300, seed="stow-300", rows=16, cols=16)
    second = write_synthetic_ct(tmp_path / "b", n_slices=300, seed="stow-curl", rows=16, cols=16)
    settings = _settings(tmp_path)
    settings["dicom"]["series_quiet_seconds"] = 60.0
    daemon = DaemonProcess(tmp_path, settings)
    daemon.start()
    try:
        client = DICOMwebClient(_url(daemon))
        datasets = [dcmread(p) for p in first.paths]
        answer = client.store_instances(datasets)
        assert len(answer.ReferencedSOPSequence) == 300 and not answer.get("FailedSOPSequence")
        (tmp_path / "body").write_bytes(_body(list(second.paths)))
        curl = subprocess.run(
            ["curl", "-sS", "--max-time", "60", "-o", str(tmp_path / "answer.json"), "-w", "%{http_code}",
             "-H", f"Content-Type: {CONTENT_TYPE}", "--data-binary", f"@{tmp_path / 'body'}",
             f"{_url(daemon)}/studies"], capture_output=True, text=True, timeout=90)
        assert curl.stdout == "200", curl.stderr
        curl_answer = json.loads((tmp_path / "answer.json").read_text())
        assert len(curl_answer["00081199"]["Value"]) == 300
        wait_until(lambda: _series_done(daemon, 2), 45, "both series processed before the quiet time", daemon)
        again = client.store_instances(datasets[:5])
        assert len(again.ReferencedSOPSequence) == 5
    finally:
        assert daemon.terminate() == 0
    assert len(journal_rows(daemon, "SELECT id FROM jobs")) == 2
    counts = journal_rows(daemon, "SELECT a.attrs, COUNT(i.sop_instance_uid) n FROM arrivals a"
                                  " JOIN instances i ON i.arrival_id=a.id GROUP BY a.id")
    assert sorted(r["n"] for r in counts) == [300, 300]
    assert {json.loads(r["attrs"])["series_uid"] for r in counts} == {first.series_uid, second.series_uid}
    summaries = sorted((tmp_path / "outputs").rglob("summary.json"))
    assert [json.loads(p.read_text())["instances"] for p in summaries] == [300, 300]


def test_bad_requests_get_a_4xx_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "in", n_slices=2, seed="stow-bad", rows=16, cols=16)
    tokens = tmp_path / "tokens"
    tokens.write_text("modality-1 t0ken-one\n")
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, tokens_file=str(tokens), max_request_bytes=1 << 20))
    daemon.start()
    auth = {"Authorization": "Bearer t0ken-one"}
    try:
        good = _body(list(series.paths))
        assert _post(daemon, good)[0] == 401  # no token
        assert _post(daemon, good, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _post(daemon, good, "application/dicom", auth)[0] == 415
        status, _ = _post(daemon, f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                          + os.urandom(5000), headers=auth)  # cut off: no closing boundary
        assert status == 400
        status, answer = _post(daemon, _body([tmp_path / "in" / "CT0000.dcm"]).replace(b"DICM", b"XXXX"),
                               headers=auth)
        assert status == 409 and answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        assert _expect_continue(daemon, 2 << 20, auth).startswith(b"HTTP/1.1 413")
        assert _chunked_until_answered(daemon, 4 << 20, auth).startswith(b"HTTP/1.1 413")
        status, answer = _post(daemon, good, headers=auth)
        assert status == 200 and len(answer["00081199"]["Value"]) == 2
        wait_until(lambda: _series_done(daemon, 1), 60, "the good series after the bad requests", daemon)
        assert daemon.alive()
    finally:
        assert daemon.terminate() == 0
    [row] = journal_rows(daemon, "SELECT calling_ae FROM instances GROUP BY calling_ae")
    assert row["calling_ae"] == "modality-1"


def test_what_was_answered_survives_a_kill_9_during_a_post(tmp_path: Path) -> None:
    """Six series POSTed one after the other; the daemon is killed with SIGKILL while
    one is in flight. After a restart every instance of every POST answered 200 is in the
    journal; the client sends the rest again and each series is processed once."""
    series = [write_synthetic_ct(tmp_path / f"s{k}", n_slices=10, seed=f"stow-kill-{k}", rows=128, cols=128)
              for k in range(6)]
    batches = [list(s.paths) for s in series]
    daemon = DaemonProcess(tmp_path, _settings(tmp_path))
    daemon.settings["dicom"]["series_quiet_seconds"] = 60.0  # only a whole POST completes a series
    daemon.start()
    answered: list[int] = []
    stop = threading.Event()

    def send() -> None:
        for index, batch in enumerate(batches):
            if stop.is_set():
                return
            try:
                status, _ = _post(daemon, _body(batch))
            except OSError:
                return
            if status == 200:
                answered.append(index)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(answered) >= 2, 60, "two POSTs answered", daemon, poll=0.01)
    os.kill(daemon.pid, signal.SIGKILL)
    stop.set()
    sender.join(60)
    daemon.process.wait(10)  # type: ignore[union-attr]
    daemon.start()
    try:
        held = {r["sop_instance_uid"] for r in journal_rows(daemon, "SELECT sop_instance_uid FROM instances")}
        for index in answered:
            for path in batches[index]:
                assert str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) in held
        for index, batch in enumerate(batches):
            if index not in answered:
                assert _post(daemon, _body(batch))[0] == 200
        wait_until(lambda: _series_done(daemon, 6), 90, "every series processed once", daemon)
    finally:
        assert daemon.terminate() == 0
    counts = journal_rows(daemon, "SELECT COUNT(*) n FROM instances GROUP BY arrival_id")
    assert sorted(r["n"] for r in counts) == [10] * 6


def _certificate(folder: Path, name: str, server: bool = False) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    extra = ["-addext", "subjectAltName=IP:127.0.0.1"] if server else []
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", *extra, "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_with_client_certificates_and_allowed_clients(tmp_path: Path) -> None:
    """TLS with required client certificates: the certificate's common name is the
    client; one not in allowed_clients gets 403; without a certificate no connection."""
    import requests

    server = _certificate(tmp_path, "localhost", server=True)
    allowed, other = _certificate(tmp_path, "modality-7"), _certificate(tmp_path, "intruder")
    trusted = tmp_path / "clients.pem"
    trusted.write_bytes(allowed[0].read_bytes() + other[0].read_bytes())
    series = write_synthetic_ct(tmp_path / "in", n_slices=2, seed="stow-tls", rows=16, cols=16)
    daemon = DaemonProcess(tmp_path, _settings(tmp_path, allowed_clients=["modality-7"], tls={
        "certificate": str(server[0]), "private_key": str(server[1]), "ca_certificates": str(trusted),
        "require_client_certificate": True}))
    daemon.start()
    url = f"https://127.0.0.1:{daemon.settings['dicomweb']['port']}/dicom-web/studies"
    body, headers = _body(list(series.paths)), {"Content-Type": CONTENT_TYPE}
    try:
        verify = str(server[0])
        stored = requests.post(url, data=body, headers=headers, cert=allowed, verify=verify, timeout=30)
        assert stored.status_code == 200, stored.text
        refused = requests.post(url, data=body, headers=headers, cert=other, verify=verify, timeout=30)
        assert refused.status_code == 403
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, data=body, headers=headers, verify=verify, timeout=30)
        wait_until(lambda: _series_done(daemon, 1), 60, "the series over TLS", daemon)
    finally:
        assert daemon.terminate() == 0
    [row] = journal_rows(daemon, "SELECT DISTINCT calling_ae FROM instances")
    assert row["calling_ae"] == "modality-7"

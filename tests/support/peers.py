"""Real DICOM peers on loopback for tests and benchmarks: Orthanc, dcmtk, synthetic CT.

Everything here starts real programs bound to 127.0.0.1 on free ports and stops them by
PID. Use :class:`PeerSet` (or the ``peers`` pytest fixture) to own the processes of one
test: on exit it stops them all and fails when one is still alive.

Typical use in a test (``peers`` is also exported by ``tests/conftest.py``)::

    def test_export(peers: PeerSet, tmp_path: Path) -> None:
        series = write_synthetic_ct(tmp_path / "ct", n_slices=5, rows=64, cols=64)
        orthanc = peers.orthanc(modalities={"acqflow": ("ACQFLOW", acqflow_port)})
        assert storescu(orthanc.dicom_port, series.paths, called_ae=orthanc.aet,
                        calling_ae="ACQFLOW").returncode == 0
        assert orthanc.sop_instance_uids() == set(series.sop_uids)
        orthanc.store_to_modality("acqflow", orthanc.series())  # Orthanc → acqflow

Notes for users:
- dcmtk and Orthanc delay every C-STORE reply by ~45 ms on loopback (Nagle) unless
  ``TCP_NODELAY=1`` is in their environment; every helper here sets it.
- The venv has pynetdicom's own ``storescu``/``storescp`` scripts; the dcmtk tools are
  called by absolute path (``/usr/bin/...``) so the two are never confused.
- Orthanc 1.10 has no bind-address option: it listens on all interfaces, but with
  ``RemoteAccessAllowed: false`` (HTTP) and ``DicomCheckModalityHost`` plus
  ``DicomAlwaysAllowStore: false`` (DICOM) only loopback peers it knows are served.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

__all__ = [
    "DCMTK_ECHOSCU",
    "DCMTK_STORESCP",
    "DCMTK_STORESCU",
    "LOOPBACK",
    "ORTHANC",
    "OrthancPeer",
    "PeerProcess",
    "PeerSet",
    "SyntheticSeries",
    "echoscu",
    "free_port",
    "no_thread_leaks",
    "nodelay_env",
    "peers",
    "storescu",
    "wait_for_port",
    "write_synthetic_ct",
]

LOOPBACK = "127.0.0.1"
DCMTK_STORESCU = "/usr/bin/storescu"
DCMTK_STORESCP = "/usr/bin/storescp"
DCMTK_ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian orthanc-dicomweb


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    """Wait until something accepts TCP connections on ``port``; raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def nodelay_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for dcmtk/Orthanc: ``TCP_NODELAY=1`` (fair, fast replies)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


@dataclass
class PeerProcess:
    """A peer program started by us; :meth:`stop` ends it by PID (TERM, then KILL)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the process and reap it; returns its exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                return int(self.popen.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return int(self.popen.wait(timeout=timeout))

    def log_tail(self, limit: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-limit:]


@dataclass
class PeerSet:
    """Owns the peer processes of one test or benchmark run."""

    workdir: Path
    processes: list[PeerProcess] = field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> PeerProcess:
        """Start ``argv`` with output to ``workdir/<name>.log``."""
        log_path = self.workdir / f"{name}.{len(self.processes)}.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env or nodelay_env()),
                stdin=subprocess.DEVNULL,
            )
        process = PeerProcess(name=name, popen=popen, log_path=log_path)
        self.processes.append(process)
        return process

    def orthanc(
        self, aet: str = "ORTHANC", modalities: Mapping[str, tuple[str, int]] | None = None,
        dicomweb: bool = False, users: Mapping[str, str] | None = None,
    ) -> OrthancPeer:
        """Start an Orthanc with its own storage; ``modalities`` maps name → (AE, port);
        ``dicomweb`` loads its DICOMweb plugin (``dicomweb_url``)."""
        peer = OrthancPeer(self, aet=aet, modalities=dict(modalities or {}), dicomweb=dicomweb,
                           users=dict(users or {}))
        peer.start()
        return peer

    def storescp(self, output_dir: Path, aet: str = "STORESCP", max_pdu: int = 16384,
                 extra: Sequence[str] = ()) -> tuple[PeerProcess, int]:
        """Start dcmtk storescp writing to ``output_dir``; returns (process, port)."""
        output_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [DCMTK_STORESCP, "-aet", aet, "-od", str(output_dir), "--max-pdu", str(max_pdu),
                *extra, str(port)]
        process = self.spawn("storescp", argv)
        wait_for_port(port)
        return process, port

    def stop_all(self) -> list[str]:
        """Stop every process (newest first); returns the names of those that lingered."""
        lingering: list[str] = []
        for process in reversed(self.processes):
            process.stop()
            if process.alive():
                lingering.append(f"{process.name} (pid {process.pid})")
        return lingering


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[PeerSet]:
    """A :class:`PeerSet` whose processes are stopped after the test; fails on leaks."""
    peer_set = PeerSet(tmp_path / "peers")
    try:
        yield peer_set
    finally:
        lingering = peer_set.stop_all()
    assert not lingering, f"peer processes still running: {lingering}"


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    """Fail the test when threads it started are still alive 5 s after it ended."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    raise AssertionError(f"threads still running after the test: {[t.name for t in leaked]}")


# --- Orthanc ---------------------------------------------------------------------------


@dataclass
class OrthancPeer:
    """One Orthanc 1.10 with a temp config, own storage, HTTP and DICOM ports on loopback."""

    owner: PeerSet
    aet: str = "ORTHANC"
    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)
    dicomweb: bool = False  # load the DICOMweb plugin (STOW-RS, QIDO-RS, WADO-RS at /dicom-web/)
    users: dict[str, str] = field(default_factory=dict)  # HTTP basic auth (user -> password) when set
    http_port: int = 0
    dicom_port: int = 0
    process: PeerProcess | None = None

    @property
    def root(self) -> Path:
        return self.owner.workdir / f"orthanc-{self.aet}"

    def config(self) -> dict[str, Any]:
        return {
            "Name": f"acqflow-test-{self.aet}",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": {
                name: [ae, LOOPBACK, port] for name, (ae, port) in self.modalities.items()
            },
            "Plugins": [ORTHANC_DICOMWEB] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StableAge": 2,
            "DicomScuTimeout": 10,
            "HttpTimeout": 30,
            "OverwriteInstances": True,
        }

    def start(self, timeout: float = 30.0) -> None:
        """(Re)start Orthanc, keeping its storage; waits until REST ``/system`` answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.http_port:
            self.http_port, self.dicom_port = free_port(), free_port()
        config_path = self.root / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        self.process = self.owner.spawn(f"orthanc-{self.aet}", [ORTHANC, str(config_path)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"Orthanc exited at start:\n{self.process.log_tail()}")
            try:
                self.get("/system")
                wait_for_port(self.dicom_port, timeout=max(0.1, deadline - time.monotonic()))
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise TimeoutError(f"Orthanc not ready after {timeout:.0f} s:\n{self.process.log_tail()}")

    @property
    def dicomweb_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/dicom-web"

    def stop(self) -> None:
        """Stop Orthanc by PID (its storage stays for a later :meth:`start`)."""
        if self.process is not None:
            self.process.stop()

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> Any:
        """One REST call; returns the decoded JSON (or None); raises URLError/HTTPError."""
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}{path}", data=body, method=method,
            headers={"Content-Type": content_type, **self._auth()},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def request_bytes(self, path: str) -> bytes:
        """GET ``path`` and return the raw body (e.g. ``/instances/<id>/file``)."""
        request = urllib.request.Request(f"http://{LOOPBACK}:{self.http_port}{path}", headers=self._auth())
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def _auth(self) -> dict[str, str]:
        """Basic auth as the first registered user, when there are users."""
        if not self.users:
            return {}
        import base64

        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self.get("/instances"))

    def series(self) -> list[str]:
        return list(self.get("/series"))

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        uids: set[str] = set()
        for orthanc_id in self.instances():
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(str(tags["SOPInstanceUID"]))
        return uids

    def statistics(self) -> dict[str, Any]:
        return dict(self.get("/statistics"))

    def upload(self, path: Path) -> str:
        """Store a Part-10 file through REST; returns its Orthanc id."""
        answer = self.request("POST", "/instances", path.read_bytes(), "application/dicom")
        return str(answer["ID"])

    def store_to_modality(self, modality: str, resources: Sequence[str]) -> dict[str, Any]:
        """C-STORE the given Orthanc resources to a configured modality (synchronously)."""
        body = json.dumps({"Resources": list(resources), "Synchronous": True}).encode()
        return dict(self.request("POST", f"/modalities/{modality}/store", body))


# --- dcmtk command-line tools ----------------------------------------------------------


def storescu(port: int, files: Sequence[Path], called_ae: str = "ACQFLOW",
             calling_ae: str = "STORESCU", max_pdu: int = 16384, extra: Sequence[str] = (),
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run dcmtk storescu (one association for all files) with ``TCP_NODELAY=1``.

    ``extra`` adds options, e.g. ``["-R"]`` (propose only the files' own SOP classes,
    needed to send SEG) or ``["-xs"]`` (propose JPEG lossless first). Never raises on a
    DICOM failure: check ``returncode`` and ``stdout``/``stderr``.
    """
    argv = [DCMTK_STORESCU, "-aec", called_ae, "-aet", calling_ae, "--max-pdu", str(max_pdu),
            "-to", "30", "-ta", "30", "-td", "30", *extra, LOOPBACK, str(port),
            *(str(f) for f in files)]
    return subprocess.run(argv, capture_output=True, text=True, env=nodelay_env(), timeout=timeout,
                          check=False)


def echoscu(port: int, called_ae: str = "ACQFLOW", calling_ae: str = "ECHOSCU",
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run dcmtk echoscu once; returncode 0 means the C-ECHO succeeded."""
    argv = [DCMTK_ECHOSCU, "-aec", called_ae, "-aet", calling_ae, "-to", "10", "-ta", "10",
            "-td", "10", LOOPBACK, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, env=nodelay_env(), timeout=timeout,
                          check=False)


# --- synthetic CT series ---------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSeries:
    """A synthetic CT series written as Part-10 files (paths in slice order)."""

    folder: Path
    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def _phantom(rows: int, cols: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """A thigh-like phantom slice in stored values (HU + 1024): fat, muscle, two bones."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2.0, cols / 2.0
    image = np.full((rows, cols), -1000.0, dtype=np.float32)  # air
    radius = 0.42 * min(rows, cols) * (1.0 - 0.1 * np.sin(z / 40.0))
    body = (yy - cy) ** 2 / 0.8 + (xx - cx) ** 2 < radius**2
    image[body] = -100.0  # fat
    for side in (-1, 1):
        my, mx = cy, cx + side * radius * 0.45
        muscle = (yy - my) ** 2 + (xx - mx) ** 2 < (radius * 0.42) ** 2
        image[muscle] = 50.0
        bone = (yy - my) ** 2 + (xx - mx) ** 2 < (radius * 0.1) ** 2
        image[bone] = 700.0
    image += rng.normal(0.0, 12.0, size=image.shape).astype(np.float32)
    clipped: np.ndarray = np.clip(image + 1024.0, 0, 4095).astype(np.uint16)
    return clipped


def _ct_dataset(index: int, n_slices: int, seed: str, rows: int, cols: int,
                uids: Mapping[str, str], pixels: np.ndarray) -> Dataset:
    spacing, thickness = 0.78125, 1.0
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "acqflow synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC THIGH"
    ds.SeriesDescription = f"SYNTHETIC CT {n_slices}"
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = f"SYN-{seed}"[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "LEG"
    ds.Laterality = ""  # both legs in the field of view
    ds.AcquisitionNumber = 1
    ds.SliceThickness = thickness
    ds.KVP = 120
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-cols * spacing / 2, -rows * spacing / 2, -index * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = -index * thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.tobytes()
    return ds


def write_synthetic_ct(folder: Path, n_slices: int = 300, seed: str = "acqflow", rows: int = 512,
                       cols: int = 512) -> SyntheticSeries:
    """Write an ``n_slices`` axial CT series (16-bit, 0.78 mm pixels, 1 mm slices).

    UIDs are derived from ``seed`` (the same seed gives the same UIDs and pixels), the
    patient is ``SYNTHETIC^PHANTOM``. Files are ``<folder>/CT<index>.dcm`` in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_seed_int(seed))
    base = {k: generate_uid(entropy_srcs=[seed, k]) for k in ("study", "series", "frame")}
    paths: list[Path] = []
    sops: list[str] = []
    for index in range(n_slices):
        uids = {**base, "sop": generate_uid(entropy_srcs=[seed, "sop", str(index)])}
        ds = _ct_dataset(index, n_slices, seed, rows, cols, uids,
                         _phantom(rows, cols, float(index), rng))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = folder / f"CT{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(uids["sop"])
    return SyntheticSeries(folder, tuple(paths), base["study"], base["series"], tuple(sops))


def _seed_int(seed: str) -> int:
    """A stable integer from a text seed (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little")

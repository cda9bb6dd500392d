"""Checks of what the settings refer to, run by ``acqflow config check`` and at start.

Validating the settings tree proves the values are well-formed; these checks prove the
files they name are there and usable (TLS certificate, key and CA bundle, the weights
folder), so a daemon that would fail at its first association fails before it starts,
with one line naming the setting.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from acqflow.daemon.config import Settings, TlsSettings
from acqflow.daemon.errors import ConfigError

__all__ = ["check_referenced_files"]


def _readable_file(key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"{key}: file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{key}: not a regular file: {path}")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _check_tls(tls: TlsSettings) -> None:
    _readable_file("dicom.tls.certificate", tls.certificate)
    _readable_file("dicom.tls.private_key", tls.private_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"dicom.tls: certificate {tls.certificate} and key {tls.private_key} do not load:"
            f" {exc.reason or exc}"
        ) from None
    if tls.ca_certificates is not None:
        _readable_file("dicom.tls.ca_certificates", tls.ca_certificates)
        try:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"dicom.tls.ca_certificates: {tls.ca_certificates} does not load: {exc.reason or exc}"
            ) from None


def check_referenced_files(settings: Settings) -> None:
    """Raise ConfigError (one line, naming the key) for a referenced file that is
    missing, unreadable or unusable."""
    if settings.dicom.enabled and settings.dicom.tls is not None:
        _check_tls(settings.dicom.tls)
    for key, weights in settings.pipelines.weights_folders().items():
        if not weights.is_dir():
            raise ConfigError(f"{key}: not a folder: {weights}")
        if not os.access(weights, os.R_OK | os.X_OK):
            raise ConfigError(f"{key}: not readable: {weights}")

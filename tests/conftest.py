"""Shared fixtures: ``peers`` (real DICOM peers on loopback, stopped by PID)."""

from __future__ import annotations

from tests.support.peers import peers

__all__ = ["peers"]

"""Peers that refuse SOP classes, and the SEG objects they refuse, for the outbox tests.

- :func:`storescp_profile` writes a dcmtk association profile (``storescp -xf``) that
  accepts exactly the given storage SOP classes (uncompressed only) plus Verification;
  dcmtk answers a context for any other class with "abstract syntax not supported" and
  one for a compressed syntax with "transfer syntaxes not supported".
- :func:`storescp_on_port` starts dcmtk storescp on a given port (to restart a peer with
  a new profile where the destination expects it).
- :func:`write_seg` writes a BINARY (Segmentation Storage) or LABELMAP (Label Map
  Segmentation Storage, which Orthanc 1.10 and dcmtk 3.6.7 do not know) SEG of a
  synthetic CT series with highdicom.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from tests.support.peers import DCMTK_STORESCP, PeerProcess, PeerSet, SyntheticSeries, wait_for_port

__all__ = ["storescp_on_port", "storescp_profile", "write_seg"]

VERIFICATION = "1.2.840.10008.1.1"


def storescp_profile(folder: Path, sop_classes: Sequence[str], profile: str = "ACQFLOWTEST") -> list[str]:
    """Write the profile file into ``folder``; returns the storescp options that use it."""
    lines = [
        "[[TransferSyntaxes]]",
        "[Uncompressed]",
        "TransferSyntax1 = LocalEndianExplicit",
        "TransferSyntax2 = OppositeEndianExplicit",
        "TransferSyntax3 = LittleEndianImplicit",
        "",
        "[[PresentationContexts]]",
        f"[{profile}]",
    ]
    for number, uid in enumerate([VERIFICATION, *sop_classes], start=1):
        lines.append(f"PresentationContext{number} = {uid}\\Uncompressed")
    lines += ["", "[[Profiles]]", f"[{profile}]", f"PresentationContexts = {profile}", ""]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile.lower()}.cfg"
    path.write_text("\n".join(lines))
    return ["-xf", str(path), profile]


def storescp_on_port(peers: PeerSet, port: int, output_dir: Path, aet: str = "STORESCP",
                     extra: Sequence[str] = ()) -> PeerProcess:
    """Start dcmtk storescp on ``port`` writing to ``output_dir`` (owned by ``peers``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    argv = [DCMTK_STORESCP, "-aet", aet, "-od", str(output_dir), *extra, str(port)]
    process = peers.spawn("storescp", argv)
    wait_for_port(port)
    return process


def write_seg(series: SyntheticSeries, path: Path, labelmap: bool) -> Path:
    """A one-segment SEG of a square in every slice of ``series``, written to ``path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in series.paths]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    mask = np.zeros((len(sources), rows, cols), np.uint8)
    mask[:, rows // 4 : rows // 2, cols // 4 : cols // 2] = 1
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="muscle", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Muscle,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask,
        segmentation_type="LABELMAP" if labelmap else "BINARY", segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="acqflow tests", manufacturer_model_name="refusal",
        software_versions="1", device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path

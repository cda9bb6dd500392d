"""Never two acknowledged instances on one spool path: invalid UIDs refused at receive.

Each case of the fault campaign sends SOP Instance UIDs that an older spool naming
rewrote or cut to one file name (a trailing ``.``, ``+`` against ``_``, only dots, more
than 120 characters), with a real peer (dcmtk storescu, pynetdicom's SCU), and checks the
answers, the Error Comment and that the journal and the spool agree file for file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from acqflow.daemon import metrics
from acqflow.daemon.dicom.part10 import is_valid_uid
from acqflow.daemon.dicom.spool import InstanceSpool
from tests.support.peers import LOOPBACK, SyntheticSeries, no_thread_leaks, storescu, write_synthetic_ct
from tests.support.scp import RunningScp

__all__ = ["no_thread_leaks"]

CT = "1.2.840.10008.5.1.4.1.1.2"
BASE = "1.2.826.0.1.3680043.10.511.3"

# The cases of the fault campaign: UIDs that older spool names rewrote or cut alike, each
# with whether it is a valid UID (and so stored).
COLLIDING = {
    "trailing-dot": ((f"{BASE}.7", True), (f"{BASE}.7.", False)),
    "plus-vs-underscore": ((f"{BASE}.7+1", False), (f"{BASE}.7_1", False)),
    "only-dots": (("...", False), ("....", False)),
    "over-120-characters": (("1." + "2" * 130 + ".1", False), ("1." + "2" * 130 + ".2", False)),
}


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    running = RunningScp(tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSeries:
    return write_synthetic_ct(tmp_path_factory.mktemp("ct"), n_slices=1, seed="uids", rows=16, cols=16)


@pytest.fixture
def lenient_pydicom() -> Iterator[None]:
    """Let pydicom take and write the invalid UIDs a hostile sender would."""
    modes = (pydicom_config.settings.reading_validation_mode, pydicom_config.settings.writing_validation_mode)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    yield
    pydicom_config.settings.reading_validation_mode, pydicom_config.settings.writing_validation_mode = modes


def _with_uid(ct: SyntheticSeries, sop_uid: str, series_uid: str | None = None) -> Dataset:
    ds = dcmread(ct.paths[0])
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    return ds


def _journal_and_spool_agree(scp: RunningScp) -> set[str]:
    """The SOP Instance UIDs journaled, after checking each row's file holds that instance
    and that the spool has no file without a row."""
    rows = scp.journal.query("SELECT sop_instance_uid, path FROM instances")
    for row in rows:
        assert dcmread(row["path"], stop_before_pixels=True).SOPInstanceUID == row["sop_instance_uid"]
    files = {str(p) for p in InstanceSpool(scp.spool).committed_files()}
    assert files == {str(row["path"]) for row in rows}
    return {str(row["sop_instance_uid"]) for row in rows}


def _refused_count() -> float:
    return float(metrics.DICOM_INSTANCES.labels("invalid-uid")._value.get())


@pytest.mark.integration
@pytest.mark.usefixtures("no_thread_leaks", "lenient_pydicom")
# pynetdicom's SCU itself will not send a UID over 64 characters: dcmtk's does (below)
@pytest.mark.parametrize("case", sorted(set(COLLIDING) - {"over-120-characters"}))
def test_colliding_uids_are_refused_by_pynetdicom_scu(
    scp: RunningScp, ct: SyntheticSeries, case: str
) -> None:
    refused_before = _refused_count()
    valid = f"{BASE}.{len(case)}"
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW")
    assert assoc.is_established
    answers = [(assoc.send_c_store(_with_uid(ct, uid)), ok) for uid, ok in COLLIDING[case]]
    good = assoc.send_c_store(_with_uid(ct, valid))
    assoc.release()

    for answer, ok in answers:
        if ok:
            assert answer.Status == 0x0000
            continue
        assert answer.Status == 0xC000
        assert answer.ErrorComment == "Affected SOP Instance UID (0000,1000) is not a valid UID"
        assert answer.OffendingElement == 0x00001000
    assert good.Status == 0x0000
    refused = [uid for uid, ok in COLLIDING[case] if not ok]
    assert _refused_count() == refused_before + len(refused)
    stored = {uid for uid, ok in COLLIDING[case] if ok}
    assert _journal_and_spool_agree(scp) == {valid, *stored}


@pytest.mark.integration
@pytest.mark.usefixtures("no_thread_leaks", "lenient_pydicom")
@pytest.mark.parametrize("case", sorted(COLLIDING))
def test_colliding_uids_are_refused_by_dcmtk_storescu(
    scp: RunningScp, ct: SyntheticSeries, tmp_path: Path, case: str
) -> None:
    refused_before = _refused_count()
    files = []
    for index, (uid, _ok) in enumerate(COLLIDING[case]):
        path = tmp_path / f"{index}.dcm"
        _with_uid(ct, uid).save_as(path)
        files.append(path)
    valid = tmp_path / "valid.dcm"
    _with_uid(ct, f"{BASE}.99").save_as(valid)

    result = storescu(scp.receiver.port, [*files, valid], extra=["-d", "--no-halt"])
    log = result.stdout + result.stderr

    refused = sum(not ok for _uid, ok in COLLIDING[case])
    assert log.count("Error: Cannot understand") == refused, log[-3000:]
    # dcmtk cuts an over-long UID to 64 characters in the command, not in the data set
    attribute = "SOP Instance UID (0008,0018)" if case == "over-120-characters" else "(0000,1000)"
    assert log.count(f"{attribute} is not a valid UID") == refused
    assert log.count("0x0000: Success") == 1 + len(files) - refused
    assert _refused_count() == refused_before + refused
    stored = {uid for uid, ok in COLLIDING[case] if ok}
    assert _journal_and_spool_agree(scp) == {f"{BASE}.99", *stored}


@pytest.mark.integration
@pytest.mark.usefixtures("no_thread_leaks", "lenient_pydicom")
def test_invalid_series_uid_in_the_data_set_is_refused(scp: RunningScp, ct: SyntheticSeries) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, scp.receiver.port, ae_title="ACQFLOW")
    refused = assoc.send_c_store(_with_uid(ct, f"{BASE}.1", series_uid=f"{BASE}.02"))
    stored = assoc.send_c_store(_with_uid(ct, f"{BASE}.2"))
    assoc.release()

    assert refused.Status == 0xC000
    assert refused.ErrorComment == "Series Instance UID (0020,000E) is not a valid UID"
    assert refused.OffendingElement == 0x0020000E
    assert stored.Status == 0x0000
    assert _journal_and_spool_agree(scp) == {f"{BASE}.2"}


def test_uid_rules() -> None:
    assert is_valid_uid("1.2.840.10008.1.2.1") and is_valid_uid("0") and is_valid_uid("2.25.0")
    assert is_valid_uid("1." + "2" * 62)  # 64 characters
    for bad in ("", ".", "1.2.", ".1.2", "1..2", "1.02", "01", "1.2+3", "1.2_3", "1.2\n", "1.2 ",
                "1." + "2" * 63, "\u0661.\u0662"):  # Arabic-Indic digits
        assert not is_valid_uid(bad), bad


_UIDS = st.from_regex(r"\A(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,8}\Z").filter(is_valid_uid)
_ANY_TEXT = st.text(alphabet=st.sampled_from("0123456789.+_-/ \x00a"), max_size=70)


@settings(max_examples=300, deadline=None)
@given(first=_UIDS | _ANY_TEXT, second=_UIDS | _ANY_TEXT, series=_UIDS)
def test_two_distinct_accepted_uids_never_share_a_spool_path(first: str, second: str, series: str) -> None:
    spool = InstanceSpool(Path("/spool"))
    paths = {}
    for uid in (first, second):
        try:
            paths[uid] = spool.path_for(series, uid)
        except ValueError:
            assert not is_valid_uid(uid)  # refused: never stored, so never on a path
            continue
        assert is_valid_uid(uid)
        assert paths[uid].parent == Path("/spool") / series and paths[uid].name == f"{uid}.dcm"
    if first != second and len(paths) == 2:
        assert paths[first] != paths[second]

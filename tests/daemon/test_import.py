"""``acqflow import``: an unorganised tree in, one series arrival per Series Instance UID
out, every bad file a line in the summary, a second run registering only what is new."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from acqflow.daemon.config import Settings
from acqflow.daemon.dicom.importing import DicomImport, SkipReason
from acqflow.daemon.journal import ArrivalState, Journal
from acqflow.daemon.service import Daemon
from tests.support.daemon_proc import (
    REPO,
    TEST_PIPELINES,
    DaemonProcess,
    journal_rows,
    toml_dumps,
    wait_until,
)
from tests.support.peers import free_port, write_synthetic_ct


def _messy_tree(root: Path) -> dict[str, list[Path]]:
    """Three CT series scattered: two mixed in one folder, one split over two folders,
    with everything an archive also holds."""
    a = write_synthetic_ct(root / "staging" / "a", n_slices=4, seed="import-a", rows=16, cols=16)
    b = write_synthetic_ct(root / "staging" / "b", n_slices=3, seed="import-b", rows=16, cols=16)
    c = write_synthetic_ct(root / "staging" / "c", n_slices=4, seed="import-c", rows=16, cols=16)
    tree = root / "archive"
    mixed = tree / "2019" / "scans"
    mixed.mkdir(parents=True)
    for series, tag in ((a, "a"), (b, "b")):
        for path in series.paths:
            shutil.copy(path, mixed / f"{tag}-{path.name}")
    for index, path in enumerate(c.paths):
        part = tree / "patient" / ("part1" if index < 2 else "deeper" / Path("part2"))
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, part / f"IM{index}")  # no extension, as archives often have
    shutil.copy(a.paths[0], tree / "patient" / "copy-of-a0.dcm")  # the same instance twice
    (tree / "notes.txt").write_text("not an image")
    (tree / "2019" / "thumbs.db").write_bytes(os.urandom(300))
    corrupt = bytearray(b.paths[0].read_bytes()[:400])
    corrupt[132:] = os.urandom(len(corrupt) - 132)  # a preamble and DICM, then garbage
    (tree / "2019" / "corrupt.dcm").write_bytes(bytes(corrupt))
    shutil.copy(get_testdata_file("DICOMDIR"), tree / "DICOMDIR")
    (tree / "patient" / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "patient" / "dangling.dcm").symlink_to(root / "gone.dcm")
    os.mkfifo(tree / "pipe")
    shutil.rmtree(root / "staging")
    return {"a": sorted(mixed.glob("a-*")), "b": sorted(mixed.glob("b-*")),
            "c": sorted((tree / "patient").rglob("IM*"))}


def _series(journal: Journal) -> dict[str, tuple[str, str, list[str]]]:
    """series UID -> (source, state, sorted instance paths)."""
    out = {}
    for row in journal.query("SELECT * FROM arrivals ORDER BY id"):
        paths = sorted(str(r["path"]) for r in journal.query(
            "SELECT path FROM instances WHERE arrival_id=?", (row["id"],)))
        out[json.loads(row["attrs"])["series_uid"]] = (row["source"], row["state"], paths)
    return out


def test_an_unorganised_tree_becomes_one_arrival_per_series(tmp_path: Path) -> None:
    files = _messy_tree(tmp_path)
    journal = Journal(tmp_path / "journal.sqlite3")
    summary = DicomImport(journal).run([tmp_path / "archive"])
    series = _series(journal)
    expected = {str(dcmread(paths[0]).SeriesInstanceUID): paths for paths in files.values()}
    assert set(series) == set(expected)
    for uid, paths in expected.items():
        source, state, registered = series[uid]
        assert (source, state) == ("import", ArrivalState.READY.value)
        assert registered == sorted(str(p) for p in paths)  # by reference: the originals
    assert (summary.series_new, summary.instances, summary.mixed_folders) == (3, 11, 1)
    assert summary.skipped == {
        SkipReason.DUPLICATE.value: 1, SkipReason.NOT_DICOM.value: 2, SkipReason.UNREADABLE.value: 1,
        SkipReason.NO_UID.value: 1,
        SkipReason.DICOMDIR.value: 1, SkipReason.LINK_LOOP.value: 1, SkipReason.NOT_A_FILE.value: 1,
    }
    examples = summary.examples
    duplicates = examples[SkipReason.DUPLICATE.value]
    assert any("copy-of-a0.dcm" in e and str(files["a"][0]) in e for e in duplicates)
    assert any("dangling.dcm: broken symbolic link" in e for e in examples[SkipReason.UNREADABLE.value])
    assert examples[SkipReason.NO_UID.value] == [
        f"{tmp_path / 'archive' / '2019' / 'corrupt.dcm'}: SOP Instance UID missing or not a valid UID"]
    assert any(e == f"{tmp_path / 'archive' / 'patient' / 'loop'}: -> {tmp_path / 'archive'}"
               for e in examples[SkipReason.LINK_LOOP.value])
    journal.close()


def test_a_second_run_registers_only_what_is_new(tmp_path: Path) -> None:
    files = _messy_tree(tmp_path)
    journal = Journal(tmp_path / "journal.sqlite3")
    DicomImport(journal).run([tmp_path / "archive"])
    again = DicomImport(journal).run([tmp_path / "archive"])
    assert (again.read, again.instances, again.series_new, again.series_updated) == (0, 0, 0, 0)
    assert again.unchanged == again.files
    # A slice of series c that was missing, and a new series, arrive in the archive.
    uid_c = str(dcmread(files["c"][0]).SeriesInstanceUID)
    generation = journal.arrival_by_key(f"series:{uid_c}")
    assert generation is not None
    late = write_synthetic_ct(tmp_path / "late", n_slices=5, seed="import-c", rows=16, cols=16)
    shutil.copy(late.paths[4], tmp_path / "archive" / "patient" / "IM4")
    write_synthetic_ct(tmp_path / "archive" / "new", n_slices=2, seed="import-d", rows=16, cols=16)
    third = DicomImport(journal).run([tmp_path / "archive"])
    assert (third.read, third.series_new, third.series_updated, third.instances) == (3, 1, 1, 3)
    updated = journal.arrival_by_key(f"series:{uid_c}")
    assert updated is not None and updated.generation == generation.generation + 1
    assert updated.state is ArrivalState.READY
    assert journal.query("SELECT COUNT(*) FROM instances")[0][0] == 14
    journal.close()


def test_a_run_cut_off_after_reading_registers_at_the_next(tmp_path: Path) -> None:
    """Headers read and recorded, the process gone before registering: the next run reads
    nothing again and registers every series."""
    _messy_tree(tmp_path)
    journal = Journal(tmp_path / "journal.sqlite3")
    cut = DicomImport(journal)
    from acqflow.daemon.dicom.importing import ImportProgress, ImportSummary

    cut._read_headers([tmp_path / "archive"], ImportSummary(roots=()), ImportProgress())
    assert journal.query("SELECT COUNT(*) FROM arrivals")[0][0] == 0
    summary = DicomImport(journal).run([tmp_path / "archive"])
    assert (summary.read, summary.series_new, summary.instances) == (0, 3, 11)
    journal.close()


def test_instances_the_journal_holds_are_not_registered_again(tmp_path: Path) -> None:
    series = write_synthetic_ct(tmp_path / "in", n_slices=3, seed="import-held", rows=16, cols=16)
    journal = Journal(tmp_path / "journal.sqlite3")
    DicomImport(journal).run([series.folder])
    (tmp_path / "elsewhere").mkdir()
    for path in series.paths:
        shutil.copy(path, tmp_path / "elsewhere" / path.name)
    summary = DicomImport(journal).run([tmp_path / "elsewhere"])
    assert (summary.instances, summary.series_new, summary.series_updated) == (0, 0, 0)
    assert summary.skipped == {SkipReason.DUPLICATE.value: 3}
    assert journal.query("SELECT COUNT(*) FROM arrivals")[0][0] == 1
    journal.close()


def test_copies_are_purged_with_the_spool_and_originals_never(tmp_path: Path) -> None:
    """--copy puts the instances under the state folder; retention removes those copies
    once the series is finished, and never a folder an import references."""
    referenced = write_synthetic_ct(tmp_path / "archive" / "ref", n_slices=2, seed="import-r", rows=16,
                                    cols=16)
    copied = write_synthetic_ct(tmp_path / "archive2" / "copy", n_slices=2, seed="import-k", rows=16,
                                cols=16)
    settings = Settings.model_validate({"paths": {"state_dir": str(tmp_path / "state"),
                                                  "outputs_dir": str(tmp_path / "out")},
                                        "retention": {"spool_days": 0.0001}})
    journal = Journal(settings.paths.journal)
    DicomImport(journal).run([referenced.folder])
    DicomImport(journal, copy_root=settings.paths.imports).run([copied.folder])
    copies = sorted(settings.paths.imports.rglob("*.dcm"))
    assert [p.name for p in copies] == sorted(f"{uid}.dcm" for uid in copied.sop_uids)
    assert [p.read_bytes() for p in copies] == [
        p.read_bytes() for p in sorted(copied.paths, key=lambda p: dcmread(p).SOPInstanceUID + ".dcm")]
    with journal.transaction() as db:
        db.execute("UPDATE arrivals SET state='routed', updated_at=0")
    daemon = Daemon(settings)
    daemon.journal = journal
    assert daemon.purge_spool() == 1
    assert not settings.paths.imports.joinpath(copied.series_uid).exists()
    assert all(p.is_file() for p in referenced.paths + copied.paths)
    journal.close()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "acqflow.toml"
    config.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\noutputs_dir = "{tmp_path / "out"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACQFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "acqflow.daemon", "import", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_the_command_prints_a_summary_and_lists_every_skipped_file(tmp_path: Path) -> None:
    _messy_tree(tmp_path)
    done = _cli(tmp_path, str(tmp_path / "archive"), "--skipped", str(tmp_path / "skipped.csv"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  series registered: 3 new, 0 with new instances (11 instances)" in lines
    assert "  folders holding several series: 1 (grouped by Series Instance UID)" in lines
    assert f"    {SkipReason.NOT_DICOM.value}: 2" in lines
    assert "  the daemon routes them when it starts; `acqflow jobs` shows their jobs" in lines
    assert "import: 2/3 series registered" not in done.stderr  # no bar or lines mid-run on a pipe here
    with (tmp_path / "skipped.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["path"]).name for r in rows} == {"copy-of-a0.dcm", "notes.txt", "thumbs.db", "corrupt.dcm",
                                                    "DICOMDIR", "dangling.dcm", "loop", "pipe"}
    again = _cli(tmp_path, str(tmp_path / "archive"), "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["instances"], report["unchanged"], report["daemon_running"]) == (0, report["files"], False)
    missing = _cli(tmp_path, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_an_imported_series_that_cannot_be_read_is_quarantined_by_its_own_files(tmp_path: Path) -> None:
    """Imported, then one of its files removed from the archive before the daemon ran: the
    job is refused and the quarantine holds copies of that series' files only (not the
    folder, which holds another series too); the archive is left as it is."""

    broken = write_synthetic_ct(tmp_path / "archive", n_slices=3, seed="import-q", rows=16, cols=16)
    for path in broken.paths:
        path.rename(path.with_name(f"q-{path.name}"))
    other = write_synthetic_ct(tmp_path / "archive", n_slices=2, seed="import-ok", rows=16, cols=16)
    settings = {
        "paths": {"state_dir": str(tmp_path / "state"), "outputs_dir": str(tmp_path / "outputs")},
        "workers": {"device": "cpu", "poll_seconds": 0.2},
        "metrics": {"port": free_port()},
        "dicom": {"port": free_port()},
        "routes": [{"name": "ct", "kind": ["dicom-series"], "pipelines": ["test-series"]}],
        "pipelines": {"modules": TEST_PIPELINES},
    }
    daemon = DaemonProcess(tmp_path, settings)
    daemon.config_path.write_text(toml_dumps(settings))  # start() writes it too; import runs first
    assert daemon.cli("import", str(tmp_path / "archive")).returncode == 0
    gone = tmp_path / "archive" / "q-CT0001.dcm"
    gone.unlink()
    daemon.start()
    try:
        def finished() -> list[str]:
            return sorted(r["state"] for r in journal_rows(daemon, "SELECT state FROM jobs"))

        wait_until(lambda: finished() == ["dead", "done"], 60, "both imported series", daemon)
    finally:
        assert daemon.terminate() == 0
    [entry] = list((tmp_path / "state" / "quarantine").iterdir())
    note = json.loads((entry / "reason.json").read_text())
    assert "DICOM file missing" in note["reason"] and (note["instances"], note["missing"]) == (3, 1)
    copied = sorted(p.name for p in entry.rglob("*.dcm"))
    assert copied == ["00000_q-CT0000.dcm", "00002_q-CT0002.dcm"]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == sorted(
        ["q-CT0000.dcm", "q-CT0002.dcm", *(p.name for p in other.paths)])

"""Run the bad-input corpus and write its table into ``docs/reliability.md``.

Usage (from the repository root)::

    python -m tests.reliability.report            # run the corpus, rewrite the table
    python -m tests.reliability.report --from FILE  # rewrite it from a recorded run

The corpus tests append one JSON line per case to the file named by
``ACQFLOW_CORPUS_REPORT``; this script runs them with it set, then replaces the text
between the ``corpus:begin`` and ``corpus:end`` markers of ``docs/reliability.md`` with one
row per case of ``tests.reliability.corpus.CASES``: what was sent, what was expected,
what the daemon did, and whether it was contained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.reliability.corpus import CASES, Case
from tests.reliability.harness import REPORT_ENV

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- corpus:begin -->", "<!-- corpus:end -->"


def run_corpus(target: Path) -> int:
    """Run the three corpus modules with the report file set; returns pytest's exit code."""
    env = {**os.environ, REPORT_ENV: str(target)}
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            "tests/reliability/test_dicom_corpus.py",
            "tests/reliability/test_folder_corpus.py",
            "tests/reliability/test_tcp_corpus.py",
        ],
        cwd=REPO,
        env=env,
    )


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expected(case: Case) -> str:
    labels = ",".join(f"{k}={v}" for k, v in case.labels.items())
    change = "+1" if case.increases else "unchanged"
    quarantine = "quarantined" if case.quarantined else "not quarantined"
    return (
        f"{case.outcome.value}; `{case.metric.removeprefix('acqflow_')}{{{labels}}}` {change}; {quarantine}"
    )


def table(observations: dict[str, dict[str, object]]) -> str:
    lines = [
        "| case | input | expected | observed | metric Δ / quarantined / next good input | result |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES.values():
        seen = observations.get(case.id)
        if seen is None:
            lines.append(f"| `{case.id}` | {_cell(case.title)} | {_cell(_expected(case))} | not run | | |")
            continue
        error = f" ({seen['error']})" if seen.get("error") else ""
        figures = (
            f"{float(seen['metric_delta']):+g} / {seen['quarantined']} / "  # type: ignore[arg-type]
            f"{'processed' if seen['good_after'] else 'NOT processed'}"
        )
        failures = list(seen.get("failures") or [])  # type: ignore[call-overload]
        result = "contained" if not failures else "FAILS: " + "; ".join(map(str, failures))
        lines.append(
            f"| `{case.id}` | {_cell(case.title)} | {_cell(_expected(case))} | "
            f"{_cell(str(seen['outcome']) + error)} | {figures} | {_cell(result, 240)} |"
        )
    contained = sum(1 for o in observations.values() if not o.get("failures"))
    lines.append("")
    lines.append(f"{len(CASES)} cases, {len(observations)} run, {contained} contained.")
    return "\n".join(lines)


def write_doc(observations: dict[str, dict[str, object]]) -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + table(observations) + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a recorded JSON-lines run")
    args = parser.parse_args()
    code = 0
    source = args.source
    if source is None:
        source = Path(tempfile.mkdtemp(prefix="acqflow-corpus-")) / "observations.jsonl"
        code = run_corpus(source)
    observations = {}
    for line in source.read_text().splitlines():
        entry = json.loads(line)
        observations[entry["case"]] = entry
    write_doc(observations)
    print(f"{DOC}: {len(observations)} cases written (pytest exit {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

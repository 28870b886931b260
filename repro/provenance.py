"""The training code's versions and the log of changes proven to alter no number (the re-record rule).

A run records the md5 of every file of the training code (``code_files``); :func:`training_code_version` names that
state in 12 hex digits. ``results/provenance.csv`` (:data:`PROVENANCE_LOG`) lists each change of the training code
that was proven, on one machine, to leave every number of a run unchanged (``repro.runner.equivalence`` runs the
proof; docs/versions.md, "Recording a change that alters no number"). :func:`equivalent_to` reads the chain: the
versions whose runs count as the current code's. Three readers use it: the committed study's tests, the analysis
(which versions its runs ran) and the trainer, which resumes a checkpoint of number-equivalent code.

Plain Python (no torch, no pandas), so that every package may import it.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping
from pathlib import Path

PROVENANCE_LOG = Path(__file__).resolve().parents[1] / "results" / "provenance.csv"
LOG_FIELDS = ("date", "from_code", "to_code", "change", "proof_runs", "machine", "excluded_fields")


def training_code_version(code_files: Mapping[str, str] | None) -> str | None:
    """A short name for the training code a run ran: the first 12 hex digits of the md5 over its ``code_files``
    (``metrics.json``: path -> md5 of every code file of the ``train`` stage), one ``path md5`` line per file in
    path order.

    Runs started at different commits share it as long as no training code changed between them, so it, not the
    commit, says whether runs are comparable. ``None`` for a run that recorded no code files (nnU-Net's, trained by
    its own code). The current code's: ``training_code_version(repro.training.identity.code_files())``.
    """
    if not code_files:
        return None
    lines = "".join(f"{path} {md5}\n" for path, md5 in sorted(code_files.items()))
    return hashlib.md5(lines.encode()).hexdigest()[:12]


def read_log(path: Path | str = PROVENANCE_LOG) -> list[dict[str, str]]:
    """The provenance log's rows (none when there is no log).

    Raises:
        ValueError: a row without every one of :data:`LOG_FIELDS`, naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows, start=2):
        if set(row) != set(LOG_FIELDS) or not all(row.values()):
            raise ValueError(f"{path}, line {number}: a row needs every one of {LOG_FIELDS} filled")
    return rows


def equivalent_to(current: str, log: list[dict[str, str]]) -> set[str]:
    """Every training-code version (:func:`training_code_version`) whose runs are number-equivalent to
    ``current``'s: ``current`` itself and every version from which a chain of logged changes leads to it."""
    versions, grown = {current}, True
    while grown:
        before = len(versions)
        versions |= {row["from_code"] for row in log if row["to_code"] in versions}
        grown = len(versions) > before
    return versions

"""Step 3 of the re-record rule, fast: record new training code in every training stage of dvc.lock at once.

``dvc commit -f`` on every committed training stage rewrites dvc.lock once per stage (about 20 minutes for 280
stages). Their code deps are the same files for every training stage (dvc.yaml's ``train`` stage and the stages that
share its deps; ``tests/test_dask_runner.py`` checks it), so after ``dvc commit -f`` of one stage, its block of code
deps is what ``dvc commit`` would write for each of the others. This script copies that block into every other
training stage's entry, leaving each stage's own data deps, params and outputs as they are:

    dvc commit -f train@ph2-dermoscopy-unet-0
    python scripts/relock_training_code.py train@ph2-dermoscopy-unet-0
    dvc status     # the committed training stages must all be up to date; only untrained runs may be listed

Only under the rule (docs/versions.md, "Recording a change that alters no number"): the proof first, its row of
results/provenance.csv, then this.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# dvc.yaml's training stages (repro.runner.grid.TRAIN_STAGES, which tests/test_relock.py checks this against).
TRAINING_STAGES = (
    "train",
    "train_extra",
    "train_ablations",
    "train_controls",
    "train_volumes",
    "train_independent",
    "train_universal",
)
_ENTRY = re.compile(r"^  (\S+):\n", flags=re.M)
_DEP = "    - path: "


def entries(lock: str) -> list[tuple[str, int, int]]:
    """(stage name, start, end) of every stage entry of a dvc.lock text, in order."""
    heads = [(match.group(1), match.start()) for match in _ENTRY.finditer(lock)]
    ends = [start for _, start in heads[1:]] + [len(lock)]
    return [(name, start, end) for (name, start), end in zip(heads, ends, strict=True)]


def code_span(entry: str) -> tuple[int, int]:
    """Where an entry's code deps lie: from its first dep outside ``data/`` to its ``params:`` (dvc.lock lists deps in
    dvc.yaml's order, the prepared data first)."""
    deps = entry.index("    deps:\n")
    end = entry.index("    params:\n", deps)
    starts = [m.start() for m in re.finditer(re.escape(_DEP), entry[:end])]
    code = [s for s in starts if not entry.startswith(_DEP + "data/", s)]
    if not code:
        raise ValueError(f"no code deps in the entry:\n{entry[:200]}")
    return code[0], end


def relock(lock: str, reference: str) -> tuple[str, int]:
    """``lock`` with every training stage's code deps replaced by those of stage ``reference``; and how many."""
    found = entries(lock)
    names = [name for name, _, _ in found]
    if reference not in names:
        raise ValueError(f"dvc.lock has no stage {reference!r}")
    ref_start, ref_end = next((start, end) for name, start, end in found if name == reference)
    ref = lock[ref_start:ref_end]
    a, b = code_span(ref)
    block = ref[a:b]
    parts, last, count = [], 0, 0
    for name, start, end in found:
        if name.partition("@")[0] not in TRAINING_STAGES:
            continue
        a, b = code_span(lock[start:end])
        parts += [lock[last : start + a], block]
        last, count = start + b, count + 1
    return "".join(parts) + lock[last:], count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="a training stage just recorded with `dvc commit -f`")
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    args = parser.parse_args()
    text, count = relock(args.lock.read_text(), args.reference)
    args.lock.write_text(text)
    print(f"{count} training stages given the code deps of {args.reference}; now check `dvc status`")


if __name__ == "__main__":
    main()

"""Fixed train/val/test splits, drawn once, committed as ``data/splits/<dataset>.json`` and validated on load.

Official test subsets are kept (DRIVE, COVID-19 CT); the validation split is drawn from the training pairs.
Model selection uses the validation split only; the test split is evaluated once, at the end. Where a dataset
groups its pairs (frames of one video), whole groups are drawn, so no group straddles two splits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from repro.data.readers import DatasetError, problems_error
from repro.data.registry import BUILT_IN, REPO_ROOT, DatasetSpec, Sample

SPLITS_DIR = REPO_ROOT / "data" / "splits"
SPLIT_NAMES = ("train", "val", "test")
# The UNet++ code splits DSB2018 with random_state=41; the same number seeds every split here.
SPLIT_SEED = 41
# Below these a split is warned about: a mean over n images moves by 1/n of one image's score with each image (by
# more than a fifth below 5), too coarse to tell models apart; a split of one group (one patient, one video) scores
# that group, not the dataset.
MIN_SPLIT_IMAGES = 5
MIN_SPLIT_GROUPS = 2


def draw_split(spec: DatasetSpec, samples: list[Sample], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Draw a split of ``samples`` by the dataset's :class:`SplitPolicy`, deterministically from ``seed``.

    Ids are sorted before shuffling, so the split depends only on the ids and the seed.
    """
    if spec.split.group is not None:
        return _draw_grouped(spec, samples, seed)
    rng = np.random.default_rng(seed)
    ids = sorted(s.id for s in samples)
    official_test = sorted(s.id for s in samples if s.subset == "test")
    if official_test:
        test = official_test
        pool = [i for i in ids if i not in set(official_test)]
    else:
        pool = [ids[k] for k in rng.permutation(len(ids))]
        n_test = round(spec.split.test_fraction * len(ids))
        test, pool = sorted(pool[:n_test]), pool[n_test:]
    pool = [pool[k] for k in rng.permutation(len(pool))]
    n_val = max(1, round(spec.split.val_fraction * len(ids if not official_test else pool)))
    return {"train": sorted(pool[n_val:]), "val": sorted(pool[:n_val]), "test": test}


def _draw_grouped(spec: DatasetSpec, samples: list[Sample], seed: int) -> dict[str, list[str]]:
    """Like :func:`draw_split`, drawing whole groups (in sorted-then-shuffled order) until each split holds at
    least its fraction of the pairs."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[str]] = {}
    for sample in sorted(samples, key=lambda s: s.id):
        members.setdefault(str(sample.group), []).append(sample.id)
    official_test = {s.id for s in samples if s.subset == "test"}
    mixed = sorted(g for g, ids in members.items() if 0 < len(official_test & set(ids)) < len(ids))
    if mixed:
        raise DatasetError(f"dataset '{spec.name}': group(s) {mixed} hold official test and training pairs")

    def take(groups: list[str], target: int) -> tuple[list[str], list[str]]:
        count, k = 0, 0
        while k < len(groups) and (k == 0 or count < target):
            count, k = count + len(members[groups[k]]), k + 1
        return groups[:k], groups[k:]

    names = sorted(members)
    if official_test:
        test_groups = [g for g in names if set(members[g]) <= official_test]
        pool = [g for g in names if g not in set(test_groups)]
    else:
        pool = [names[k] for k in rng.permutation(len(names))]
        test_groups, pool = take(pool, round(spec.split.test_fraction * len(samples)))
    pool = [pool[k] for k in rng.permutation(len(pool))]
    pool_size = sum(len(members[g]) for g in pool)
    val_groups, train_groups = take(pool, max(1, round(spec.split.val_fraction * pool_size)))
    if not train_groups or not val_groups or not test_groups:
        raise DatasetError(
            f"dataset '{spec.name}': {len(members)} group(s) cannot fill train, val and test with whole groups; "
            f"a grouped split needs at least 3 groups"
        )
    return {
        name: sorted(i for g in groups for i in members[g])
        for name, groups in (("train", train_groups), ("val", val_groups), ("test", test_groups))
    }


def split_path(name: str, splits_dir: Path | None = None) -> Path:
    return (splits_dir or SPLITS_DIR) / f"{name}.json"


def write_split(spec: DatasetSpec, split: dict[str, list[str]], seed: int, splits_dir: Path | None = None) -> Path:
    """Write the split file (sorted keys, fixed formatting: byte-identical for the same split)."""
    path = split_path(spec.name, splits_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"dataset": spec.name, "seed": seed, "policy": _policy_text(spec), **split}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def _policy_text(spec: DatasetSpec) -> str:
    text = (
        f"official test subset kept where present, else {spec.split.test_fraction:.0%} of pairs drawn for test; "
        f"validation = {spec.split.val_fraction:.0%} drawn from the rest"
    )
    if spec.split.group is not None:
        text += f"; whole groups drawn (groups: {spec.split.group.describe()})"
    return text


def load_split(spec: DatasetSpec, samples: list[Sample], splits_dir: Path | None = None) -> dict[str, list[str]]:
    """Load the committed split and check it against the pairs on disk.

    Raises:
        DatasetError: the split file is missing, names an id that is not on disk, puts an id in two splits,
            leaves a pair on disk out of every split, puts an official-test pair outside the test split, or
            splits a group (of a dataset that groups its pairs) across two splits.
    """
    path = split_path(spec.name, splits_dir)
    if not path.is_file():
        raise DatasetError(
            f"{path}: no split file for '{spec.name}'; draw one with `python -m repro.data.prepare --draw-split "
            f"{spec.name}` and commit it"
        )
    document = json.loads(path.read_text())
    missing_keys = [k for k in SPLIT_NAMES if k not in document]
    if missing_keys:
        raise DatasetError(f"{path}: missing split(s) {missing_keys}")
    split = {k: list(document[k]) for k in SPLIT_NAMES}
    on_disk = {s.id for s in samples}
    problems = []
    seen: dict[str, str] = {}
    for name, ids in split.items():
        if not ids:
            problems.append(f"split '{name}' is empty")
        for sample_id in ids:
            if sample_id not in on_disk:
                problems.append(f"'{sample_id}' ({name}) is not in the dataset on disk")
            if sample_id in seen:
                problems.append(f"'{sample_id}' is in both '{seen[sample_id]}' and '{name}'")
            seen[sample_id] = name
    problems += [f"'{i}' on disk is in no split" for i in sorted(on_disk - set(seen))]
    problems += [
        f"'{s.id}' belongs to the official test subset but is in '{seen[s.id]}'"
        for s in samples
        if s.subset == "test" and seen.get(s.id, "test") != "test"
    ]
    splits_of_group: dict[str, set[str]] = {}
    for sample in samples:
        if sample.group is not None and sample.id in seen:
            splits_of_group.setdefault(sample.group, set()).add(seen[sample.id])
    problems += [
        f"group '{group}' straddles {sorted(names)}; redraw the split (--draw-split) after grouping"
        for group, names in sorted(splits_of_group.items())
        if len(names) > 1
    ]
    if problems:
        raise problems_error(f"{path}: invalid split", problems)
    return split


def small_split_warnings(spec: DatasetSpec, samples: list[Sample], split: dict[str, list[str]]) -> list[str]:
    """One line for each split of ``split`` holding fewer than :data:`MIN_SPLIT_IMAGES` images or, where the dataset
    groups its pairs, fewer than :data:`MIN_SPLIT_GROUPS` groups: the split, its size and what to change."""
    entry = f"params.yaml prepare.custom_datasets.{spec.name}"
    redraw = f"and redraw the split (python -m repro.data.prepare --draw-split {spec.name})"
    change = {
        "train": f"add images, or lower val_fraction or test_fraction in {entry} {redraw}",
        "val": f"add images, or raise val_fraction in {entry} {redraw}",
        "test": f"add images, or raise test_fraction in {entry} {redraw}",
    }
    if any(s.subset == "test" for s in samples):
        change["test"] = "it is the dataset's official test subset, which only more data changes"
    if spec.name in BUILT_IN:
        # A built-in dataset's split is the one its committed runs were scored on: the warning only informs.
        change = dict.fromkeys(SPLIT_NAMES, "it is the split the study's committed runs were scored on, kept as is")
    grouped = spec.split.group is not None
    group_of = {s.id: s.group for s in samples}
    least = f"{MIN_SPLIT_IMAGES} images" + (f" or {MIN_SPLIT_GROUPS} groups" if grouped else "")
    lines = []
    for name in SPLIT_NAMES:
        ids = split[name]
        groups = len({group_of[i] for i in ids})
        if len(ids) < MIN_SPLIT_IMAGES or (grouped and groups < MIN_SPLIT_GROUPS):
            size = f"{len(ids)} image(s)" + (f" of {groups} group(s)" if grouped else "")
            lines.append(
                f"warning: split '{name}' of '{spec.name}' holds {size}, fewer than {least}: its scores rest on too "
                f"few; {change[name]}"
            )
    return lines


def warn_small_splits(spec: DatasetSpec, samples: list[Sample], split: dict[str, list[str]]) -> None:
    """Print :func:`small_split_warnings` to stderr (the split command and every prepare say it)."""
    for line in small_split_warnings(spec, samples, split):
        print(line, file=sys.stderr, flush=True)

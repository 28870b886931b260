"""A training run's identity: everything that decides its result, recorded in its checkpoint and its metrics.

A checkpoint may only be resumed by the run that wrote it. :class:`RunIdentity` names that run by content, not by
folder: the dataset, its definition and its training settings, the model variant with its architecture and
options, the seed, the scale with its full preset, the md5 of every file of the prepared data, and the md5 of every
file the ``train`` stage of ``dvc.yaml`` lists as code. :func:`check_resumable` compares a checkpoint's identity
with the run about to start and refuses another run's checkpoint before anything is trained, naming every field
that differs.

The identity also records where the run comes from: the data root and the git commit, with ``+dirty`` whenever a
dependency of the run differs from that commit (a code or split file of the ``train`` and ``prepare`` stages,
edited, staged or untracked, or one of the stages' keys of ``params.yaml``). Which files and keys those are is
read from ``dvc.yaml`` through DVC's own API (its loader, and its ``${...}`` interpolation filled with the run's
values), so the identity follows the pipeline's own definition of the run's dependencies.

``repro.training.run.identify`` builds the identity of a resolved run. :func:`code_files` and :func:`stages_commit`
are the study's one provenance: nnU-Net's runs (``repro.nnunet``) record theirs with them too.
``repro.training.trainer.Trainer`` stores the identity in every checkpoint and checks it before resuming;
``repro.training.record`` writes it into the run's ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from repro.data.registry import REPO_ROOT, get_dataset
from repro.provenance import equivalent_to, read_log, training_code_version

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"
TRAIN_STAGE = "train"
# Python writes its bytecode cache beside the code it imports: running the code must not change the code's hash.
_NOT_CODE = "__pycache__"
_MISSING = object()


@dataclass(frozen=True)
class RunIdentity:
    """Everything that decides a run's result, plus where it comes from (JSON round-trip: :meth:`to_dict`,
    :meth:`from_dict`).

    Args:
        dataset: dataset name.
        dataset_definition: the registry's :class:`~repro.data.registry.DatasetSpec` as plain data (its file
            lister left out: ``layout`` describes what it reads, the prepared ids are in ``meta.json``), and for a
            dataset of ``prepare.custom_datasets`` that entry of ``params.yaml`` as ``custom_entry``.
        model: model variant name (``models.<name>`` in params.yaml).
        arch: the variant's architecture.
        options: the options the network is created with (the variant's, with the scale's width factor).
        seed: the run's seed.
        scale: scale preset name.
        scale_settings: the full preset (every key of ``scales.<scale>``).
        dataset_settings: the dataset's training settings (``training.<dataset>``: its lengths, ``eval_every``).
        data_files: file name -> md5 for every file of the prepared folder (``meta.json`` and the arrays): a
            threshold or split change keeps the arrays' sizes, so only their content tells runs apart.
        code_files: path -> md5 for every file the ``train`` stage of ``dvc.yaml`` lists as code (folders
            expanded, bytecode caches left out).
        data_root: the resolved data root the run was configured with.
        git_commit: HEAD, with ``+dirty`` when a dependency of the run differs from it; ``unknown`` outside git.
    """

    dataset: str
    dataset_definition: dict[str, Any]
    model: str
    arch: str
    options: dict[str, Any]
    seed: int
    scale: str
    scale_settings: dict[str, Any]
    dataset_settings: dict[str, Any]
    data_files: dict[str, str]
    code_files: dict[str, str]
    data_root: str
    git_commit: str

    # Not compared on resume. The commit: committing other runs' results (or anything else) between an
    # interruption and the resume moves HEAD without changing this run, and every input that decides the result
    # is compared by content instead (code_files, data_files, settings), which also sees uncommitted edits. The
    # data root: training reads only the prepared folder (compared through data_files); the raw files may be
    # mounted elsewhere on the machine that resumes.
    NOT_COMPARED = frozenset({"git_commit", "data_root"})

    def __post_init__(self) -> None:
        # Hold every nested value as JSON would give it back (tuples as lists, keys as strings), so that an
        # identity read back from a checkpoint or metrics.json equals the one that was written.
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Mapping):
                object.__setattr__(self, field.name, json.loads(json.dumps(value)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunIdentity:
        expected = {f.name for f in fields(cls)}
        missing, unknown = sorted(expected - set(data)), sorted(set(data) - expected)
        if missing or unknown:
            raise ValueError(f"not a run identity: missing {missing}, unknown {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunIdentity:
        return cls.from_dict(json.loads(text))


class RunMismatchError(ValueError):
    """A checkpoint belongs to another run than the one about to resume it."""


def check_resumable(
    saved: Mapping[str, Any] | None,
    current: RunIdentity,
    checkpoint: Path | str,
    log: list[dict[str, str]] | None = None,
) -> str | None:
    """Refuse to resume ``checkpoint`` unless its identity ``saved`` is ``current``'s (all but
    :attr:`RunIdentity.NOT_COMPARED`), or differs only in code that the provenance log proves number-equivalent to
    the current code (``repro.provenance``: such code computes the same numbers, so the checkpoint's states are
    those the current code would have reached).

    Args:
        log: the provenance log's rows; None reads ``results/provenance.csv``.

    Returns:
        The checkpoint's training-code version where it differs from the current one (and is number-equivalent to
        it); None where the code is the same.

    Raises:
        RunMismatchError: naming the checkpoint, every differing field (down to the differing key of a nested
            field, e.g. ``scale_settings.epochs`` or ``code_files.repro/training/trainer.py``) with both values, and
            how to start the run afresh. A checkpoint without an identity (written before identities were recorded)
            is refused as well: nothing says which run it belongs to.
    """
    restart = (
        f"Nothing was resumed or trained. To train this run from the start, delete the checkpoint (rm {checkpoint}) "
        "or give the run another checkpoint folder."
    )
    if saved is None:
        raise RunMismatchError(f"{checkpoint} belongs to another run: it records no run identity. {restart}")
    mine = current.to_dict()
    saved_code, current_code = (training_code_version(code.get("code_files")) for code in (saved, mine))
    equivalent_code = (
        saved_code is not None
        and saved_code != current_code
        and saved_code in equivalent_to(current_code, read_log() if log is None else log)
    )
    differences = []
    for name in sorted(set(mine) - RunIdentity.NOT_COMPARED - ({"code_files"} if equivalent_code else set())):
        differences += _differences(name, saved.get(name, _MISSING), mine[name])
    if differences:
        fields_named = sorted({d.split(":")[0].split(".")[0] for d in differences})
        raise RunMismatchError(
            f"{checkpoint} belongs to another run: it differs from this run in {', '.join(fields_named)}:\n  "
            + "\n  ".join(differences)
            + f"\n{restart}"
        )
    return saved_code if equivalent_code else None


def _differences(name: str, saved: Any, current: Any) -> list[str]:
    """One line per differing leaf, named by its dotted path."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return [
            line
            for key in sorted(set(saved) | set(current))
            for line in _differences(f"{name}.{key}", saved.get(key, _MISSING), current.get(key, _MISSING))
        ]
    if saved == current:
        return []

    def shown(value: Any) -> str:
        return "(absent)" if value is _MISSING else json.dumps(value)

    return [f"{name}: checkpoint {shown(saved)}, this run {shown(current)}"]


def dataset_definition(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The registered dataset ``name`` as plain data, with its ``prepare.custom_datasets`` entry if it has one."""
    spec = get_dataset(name)
    definition = {f.name: _plain(getattr(spec, f.name)) for f in fields(spec) if f.name != "list_samples"}
    custom = (params.get("prepare") or {}).get("custom_datasets") or {}
    if name in custom:
        definition["custom_entry"] = _plain(custom[name])
    return definition


def _plain(value: Any) -> Any:
    """JSON-ready data: dataclasses as their fields plus their type, mappings with string keys, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: _plain(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot record {value!r} ({type(value).__name__}) in a run identity")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_files(folder: Path | str) -> dict[str, str]:
    """File name -> md5 for every file of a prepared dataset folder (``repro.data.prepare`` writes a flat one).

    Hashing every array costs well under a second even for the paper-scale folders (a few hundred MB), against
    minutes to days of training.
    """
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{folder}: no prepared dataset here (meta.json missing); prepare it first")
    return {path.name: _md5(path) for path in sorted(folder.iterdir()) if path.is_file()}


@contextmanager
def _streams_kept() -> Iterator[None]:
    """Keep the process's stdout and stderr across an import of DVC, which wraps both (colorama strips terminal
    escapes from, and flushes every write to, a stream that is not a terminal): a run's output reads as it did
    before DVC was imported. DVC is imported where it is used, so that importers of :class:`RunIdentity` that never
    read ``dvc.yaml`` (the Trainer, ``repro.predict``) do not load it."""
    streams = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def _stages(repo_root: Path, names: list[str]) -> list[Mapping[str, Any]]:
    """The stages ``names`` of ``repo_root``'s ``dvc.yaml`` as DVC reads them, before interpolation: a ``foreach`` or
    ``matrix`` stage as the template each of its entries is resolved from (DVC's own loader: YAML anchors and merge
    keys applied, the file checked against DVC's schema).

    Raises:
        ValueError: a name that is not a stage of ``dvc.yaml`` (the message lists its stages).
    """
    with _streams_kept():
        from dvc.dvcfile import ProjectFile
        from dvc.parsing import EntryDefinition
        from dvc.repo import Repo

    # uninitialized: any folder with a dvc.yaml has stages, a copy of the study without .dvc/ too.
    with Repo(str(repo_root), uninitialized=True) as repo:
        definitions = ProjectFile(repo, repo.fs.join(repo.root_dir, DVC_FILE)).resolver.definitions
    missing = [name for name in names if name not in definitions]
    if missing:
        raise ValueError(f"{repo_root / DVC_FILE}: no stage '{missing[0]}' (stages: {', '.join(definitions)})")
    return [
        definitions[name].definition if isinstance(definitions[name], EntryDefinition) else definitions[name].template
        for name in names
    ]


def _resolve(entry: str, values: Mapping[str, Any]) -> str | None:
    """``entry`` with its ``${...}`` filled from ``values`` as DVC fills them; None when one of them is not known here.

    Args:
        entry: a dep or a params key of a stage, as dvc.yaml gives it.
        values: the names the stage's ``${...}`` refer to, as DVC's context holds them for one entry of the stage
            (``item`` a mapping for a ``matrix`` entry, a value for a ``foreach`` one; ``key``, ``scale``, ...).
    """
    with _streams_kept():
        from dvc.parsing.context import Context, KeyNotInContext
        from dvc.parsing.interpolate import to_str

    try:
        return to_str(Context(values).resolve_str(entry))
    except KeyNotInContext:
        return None


def _expand(repo_root: Path, entries: list[str], source: str) -> list[Path]:
    """The files of ``entries`` (files and folders relative to ``repo_root``), sorted, bytecode caches left out."""
    files = []
    for entry in entries:
        path = repo_root / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and _NOT_CODE not in p.relative_to(path).parts]
        else:
            raise FileNotFoundError(f"{path}: listed by {source} but missing")
    return sorted(files)


def code_files(repo_root: Path | str = REPO_ROOT, stage: str = TRAIN_STAGE) -> dict[str, str]:
    """Path -> md5 for every file of a stage's code deps in ``dvc.yaml`` (the ``train`` stage's by default).

    The code deps are the stage's literal deps; an interpolated one (``data/processed/${scale}/${item.dataset}``,
    ``${data_root}/...``) is the run's data, which :func:`data_files` covers for a training run.
    """
    with _streams_kept():
        from dvc.parsing.interpolate import is_interpolated_string

    repo_root = Path(repo_root)
    (definition,) = _stages(repo_root, [stage])
    deps = [d for d in definition.get("deps") or [] if not is_interpolated_string(d)]
    files = _expand(repo_root, deps, f"{repo_root / DVC_FILE} stages.{stage}.deps")
    return {path.relative_to(repo_root).as_posix(): _md5(path) for path in files}


def _lookup(params: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(params, Mapping) or key not in params:
            return _MISSING
        params = params[key]
    return params


def _git(repo_root: Path, *args: str) -> str:
    # No optional locks: a status check must not take the index lock that a concurrent commit needs.
    return subprocess.run(
        ["git", "--no-optional-locks", *args], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout


def git_commit(repo_root: Path | str, dataset: str, model: str, seed: int, scale: str) -> str:
    """HEAD of ``repo_root``, with ``+dirty`` when a dependency of the training run differs from it; ``unknown``
    outside git.

    The run's dependencies are those ``dvc.yaml`` gives its ``train`` stage and its dataset's ``prepare`` (or
    ``prepare_custom``) stage (:func:`stages_commit`). Deps outside the repository (the raw data below the data
    root) and the prepared data (git-ignored, a DVC output) are not in git; the identity holds the prepared data's
    md5s.
    """
    repo_root = Path(repo_root)
    try:
        params = yaml.safe_load((repo_root / PARAMS_FILE).read_text()) or {}
    except OSError:
        params = {}
    train_values = {"item": {"dataset": dataset, "model": model, "seed": seed}, "scale": scale}
    return stages_commit(repo_root, [(TRAIN_STAGE, train_values), prepare_stage(dataset, scale, params)])


def prepare_stage(dataset: str, scale: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``dvc.yaml`` stage that prepares ``dataset`` at ``scale`` and its values (:func:`stages_commit`):
    ``prepare_custom`` for a dataset of ``prepare.custom_datasets`` in ``params``, ``prepare`` otherwise."""
    custom = (params.get("prepare") or {}).get("custom_datasets") or {}
    stage = "prepare_custom" if dataset in custom else "prepare"
    return stage, {"item": dataset, "key": dataset, "scale": scale}


def stages_commit(repo_root: Path | str, stages: list[tuple[str, Mapping[str, Any]]]) -> str:
    """HEAD of ``repo_root``, with ``+dirty`` when a dependency of the given ``dvc.yaml`` stages differs from it;
    ``unknown`` outside git. The one provenance check of every run the study records (training runs and nnU-Net).

    Each stage comes with the values of its ``${...}`` for this run, as DVC's context holds them for one entry
    (``{"item": {"dataset": ..., "model": ..., "seed": ...}, "scale": ...}`` for a ``train`` entry). Its
    dependencies are its files (modified, staged or untracked below a listed folder) and its ``params.yaml`` keys
    (compared with HEAD's ``params.yaml`` by value, so that editing another variant leaves this run clean); deps
    whose ``${...}`` are not given (e.g. ``${data_root}``, outside git) are left out.
    """
    repo_root = Path(repo_root)
    try:
        commit = _git(repo_root, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    params = yaml.safe_load((repo_root / PARAMS_FILE).read_text()) or {}
    templates = _stages(repo_root, [name for name, _ in stages])
    paths, keys = [], []
    for stage, (_, values) in zip(templates, stages, strict=True):
        paths += [p for p in (_resolve(d, values) for d in stage.get("deps") or []) if p is not None]
        for entry in stage.get("params") or []:
            if not isinstance(entry, str):
                raise ValueError(f"{repo_root / DVC_FILE}: params entry {entry!r} is not a params.yaml key")
            keys += [k for k in [_resolve(entry, values)] if k is not None]
    changed_files = _git(repo_root, "status", "--porcelain", "--untracked-files=all", "--", *paths).strip()
    try:
        committed = yaml.safe_load(_git(repo_root, "show", f"HEAD:./{PARAMS_FILE}")) or {}
    except subprocess.CalledProcessError:
        committed = {}  # params.yaml is not committed: every key of the run differs from HEAD
    changed_keys = [k for k in keys if _lookup(params, k) != _lookup(committed, k)]
    return commit + ("+dirty" if changed_files or changed_keys else "")

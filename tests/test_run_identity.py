"""A run's identity: built from real files in a small git repository, compared before a checkpoint is resumed."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from repro.config import dataset_training, model_variant, scale_preset
from repro.data.registry import REPO_ROOT
from repro.provenance import training_code_version
from repro.runner.grid import TRAIN_STAGES
from repro.training import run
from repro.training.device import normalise_device
from repro.training.identity import (
    RunIdentity,
    RunMismatchError,
    check_resumable,
    code_files,
    data_files,
    dataset_definition,
    git_commit,
    prepare_stage,
)
from repro.training.run import RunConfig, identify

SMOKE = {
    "image_size": 32,
    "large_image_scale": 0.25,
    "patch_size": 32,
    "patches_per_image": 2,
    "width_mult": 0.25,
    "epochs": 2,
    "batch_size": 4,
    "lr": 0.001,
    "weight_decay": 0.0,
    "max_train_images": 8,
    "max_eval_images": 4,
}
CUSTOM = "identity-test-folders"  # a custom dataset name no other test registers
# The shape of the project's dvc.yaml: built-in and custom prepare stages, a train matrix whose first dep is the
# prepared data and the rest code.
DVC_YAML = """
stages:
  prepare:
    foreach: ${prepare.datasets}
    do:
      cmd: python -m repro.data.prepare ${item} --scale ${scale}
      deps: ["${data_root}/${item}", "data/splits/${item}.json", code/prepare.py]
      params: [scale, "scales.${scale}.image_size"]
      outs: ["data/processed/${scale}/${item}"]
  prepare_custom:
    foreach: ${prepare.custom_datasets}
    do:
      cmd: python -m repro.data.prepare ${key} --scale ${scale}
      deps: ["${item.path}", "data/splits/${key}.json", code/prepare.py]
      params: [scale, "scales.${scale}.image_size", "prepare.custom_datasets.${key}"]
      outs: ["data/processed/${scale}/${key}"]
  train:
    matrix:
      dataset: ${study.datasets}
      model: ${study.models}
      seed: ${study.seeds}
    cmd: papermill code/train.ipynb out.ipynb -p dataset ${item.dataset}
    deps: ["data/processed/${scale}/${item.dataset}", code/train.ipynb, code/train.py, code/models]
    params: [scale, "scales.${scale}", "training.${item.dataset}", "models.${item.model}"]
"""


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def write_prepared(folder: Path, seed: int = 0) -> Path:
    """A prepared folder as repro.data.prepare writes it: uint8 arrays per split and meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
        np.save(folder / f"{split}_masks.npy", (rng.random((n, 8, 8)) > 0.5).astype(np.uint8))
    meta = {"dataset": folder.name, "class_names": ["background", "lesion"], "in_channels": 3, "large_images": False}
    (folder / "meta.json").write_text(json.dumps(meta) + "\n")
    return folder


@pytest.fixture
def repo(tmp_path) -> Path:
    """A committed repository with the project's layout in miniature, and a prepared dataset (git-ignored)."""
    root = tmp_path / "repo"
    (root / "code" / "models").mkdir(parents=True)
    (root / "code" / "train.py").write_text("EPOCHS_RULE = 'cosine'\n")
    (root / "code" / "train.ipynb").write_text('{"cells": []}\n')
    (root / "code" / "prepare.py").write_text("RESIZE = 'bilinear'\n")
    (root / "code" / "models" / "unet.py").write_text("WIDTH = 64\n")
    (root / "data" / "splits").mkdir(parents=True)
    for name in ("ph2-dermoscopy", "kvasir-seg", CUSTOM):
        (root / "data" / "splits" / f"{name}.json").write_text(json.dumps({"train": [name]}) + "\n")
    params = {
        "data_root": "../datasets",
        "scale": "cpu",
        "scales": {"smoke": SMOKE, "cpu": {**SMOKE, "epochs": 18}},
        "prepare": {"datasets": ["ph2-dermoscopy", "kvasir-seg"], "custom_datasets": {}},
        "training": {name: {"train_steps": {}, "eval_every": 1} for name in ("ph2-dermoscopy", "kvasir-seg", CUSTOM)},
        "models": {"unet": {"arch": "unet"}, "tinyunet": {"arch": "tinyunet"}},
        "study": {"datasets": ["ph2-dermoscopy"], "models": ["unet"], "seeds": [0]},
        "grids": {"claims": {"models": ["unet"]}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("__pycache__/\n/data/processed/\n")
    write_prepared(root / "data" / "processed" / "smoke" / "ph2-dermoscopy")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "the study")
    return root


def edit_params(repo: Path, change) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def config(repo: Path, model: str = "unet", dataset: str = "ph2-dermoscopy", seed: int = 0) -> RunConfig:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return RunConfig(
        dataset=dataset,
        variant=model_variant(model, params),
        seed=seed,
        scale=scale_preset("smoke", params),
        dataset_settings=dataset_training(dataset, params),
        data_root=str(repo.parent / "datasets"),
        out_dir=repo / "out",
        threads=1,
        checkpoint_dir=repo / "checkpoint",
        device=torch.device("cpu"),
    )


def identity_of(repo: Path, **kwargs) -> RunIdentity:
    run = config(repo, **kwargs)
    return identify(run, repo / "data" / "processed" / "smoke" / run.dataset, repo)


def commit_of(repo: Path) -> str:
    return git_commit(repo, "ph2-dermoscopy", "unet", 0, "smoke")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_identity_records_the_whole_run_and_round_trips(repo, tmp_path):
    identity = identity_of(repo)
    head = git(repo, "rev-parse", "HEAD")
    assert identity.git_commit == head
    assert (identity.dataset, identity.model, identity.arch, identity.seed, identity.scale) == (
        "ph2-dermoscopy",
        "unet",
        "unet",
        0,
        "smoke",
    )
    assert identity.options == {"width_mult": 0.25}
    assert identity.scale_settings == SMOKE
    assert identity.dataset_settings == {"train_steps": {}, "eval_every": 1}
    assert identity.data_root == str(tmp_path / "datasets")
    assert identity.dataset_definition["class_names"] == ["background", "lesion"]
    prepared = repo / "data" / "processed" / "smoke" / "ph2-dermoscopy"
    assert identity.data_files == {p.name: md5(p) for p in prepared.iterdir()}
    assert identity.code_files == {
        p: md5(repo / p) for p in ("code/models/unet.py", "code/train.ipynb", "code/train.py")
    }
    assert RunIdentity.from_json(identity.to_json()) == identity
    # What a checkpoint holds survives torch.save / torch.load and is accepted by the run that wrote it.
    torch.save({"identity": identity.to_dict()}, tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["identity"]
    check_resumable(saved, identity_of(repo), tmp_path / "last.pt")


def test_from_dict_names_missing_and_unknown_keys(repo):
    data = identity_of(repo).to_dict()
    del data["code_files"]
    data["device"] = "cpu"
    with pytest.raises(ValueError, match=r"missing \['code_files'\], unknown \['device'\]"):
        RunIdentity.from_dict(data)


def test_definitions_are_plain_data():
    drive = dataset_definition("drive", {})
    assert drive["mask"] == {"type": "ValueMask", "classes": {"0": 0, "255": 1}}
    assert drive["large_images"] is True and "list_samples" not in drive and "custom_entry" not in drive
    assert json.loads(json.dumps(drive)) == drive


def test_data_files_tell_same_sized_arrays_apart(tmp_path):
    folder = write_prepared(tmp_path / "ph2")
    before = data_files(folder)
    assert sorted(before) == sorted(p.name for p in folder.iterdir()) and len(before) == 7
    masks = np.load(folder / "train_masks.npy")
    masks[0, 0, 0] = 1 - masks[0, 0, 0]  # e.g. another threshold: same size, other content
    np.save(folder / "train_masks.npy", masks)
    after = data_files(folder)
    assert [name for name in before if before[name] != after[name]] == ["train_masks.npy"]
    (folder / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}: no prepared dataset here"):
        data_files(folder)


def test_code_files_are_the_projects_train_stage_code():
    files = code_files(REPO_ROOT)
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    expected = {"repro/training/trainer.py", "repro/training/run.py", "notebooks/train.ipynb", "repro/models/unet.py"}
    assert expected <= set(files)
    assert all(any(f == d or f.startswith(d + "/") for d in deps) for f in files)
    assert not any("__pycache__" in f for f in files)
    assert "repro/analysis/claims.py" not in files and not any(f.startswith("data/") for f in files)
    assert files["repro/training/trainer.py"] == md5(REPO_ROOT / "repro" / "training" / "trainer.py")


def expanded(deps) -> list[str]:
    """The files of ``deps`` (files and folders of the repository), bytecode caches left out, sorted."""
    files = []
    for dep in deps:
        path = REPO_ROOT / dep
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p.relative_to(REPO_ROOT).as_posix() for p in found if "__pycache__" not in p.parts]
    return sorted(files)


def listed_code(stage: str) -> list[str]:
    """The files of a stage's code deps as dvc.yaml lists them, read without DVC: its deps without a ``${...}``
    (those name the run's data)."""
    definition = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]
    return expanded(dep for dep in definition.get("do", definition)["deps"] if "${" not in dep)


@pytest.mark.parametrize("stage", [*TRAIN_STAGES, "nnunet"])
def test_code_files_read_through_dvc_are_the_code_the_stage_lists(stage):
    """Every kind of training stage (``train`` and the stages that inherit its deps through a YAML merge key) and
    nnU-Net's, which records its runs with the same functions: DVC's reading of dvc.yaml gives the files the stage
    lists, with their md5s."""
    files = code_files(REPO_ROOT, stage)
    assert sorted(files) == listed_code(stage)
    assert all(files[path] == md5(REPO_ROOT / path) for path in files)


def test_each_run_dvc_resolves_depends_on_the_stages_code_and_its_prepared_data():
    """The entries DVC generates from the training stages' matrices (one per run of the grid), as ``dvc repro``
    resolves them: each depends on the stage's code (what :func:`code_files` hashes) and on its own prepared data,
    nothing else."""
    from dvc.dvcfile import ProjectFile
    from dvc.repo import Repo

    scale = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["scale"]
    runs = 0
    with Repo(str(REPO_ROOT)) as repo:
        resolver = ProjectFile(repo, repo.fs.join(repo.root_dir, "dvc.yaml")).resolver
        for stage in TRAIN_STAGES:
            code = code_files(REPO_ROOT, stage)
            definition = resolver.definitions[stage]
            code_deps = set()
            for key, item in definition.normalized_iterable.items():
                (entry,) = resolver.resolve_one(f"{stage}@{key}").values()
                assert entry["deps"][0] == f"data/processed/{scale}/{item['dataset']}"
                code_deps.add(tuple(entry["deps"][1:]))
                runs += 1
            assert all(expanded(deps) == sorted(code) for deps in code_deps)
    assert runs > 0


def test_code_files_name_a_missing_dep(repo):
    (repo / "code" / "train.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"code/train.py: listed by .*dvc.yaml stages.train.deps"):
        code_files(repo)


def test_commit_is_dirty_when_a_file_dependency_differs(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert commit_of(repo) == head
    # Not dependencies of this run: bytecode, the prepared data (its md5s are in the identity), another split.
    (repo / "code" / "models" / "__pycache__").mkdir()
    (repo / "code" / "models" / "__pycache__" / "unet.pyc").write_bytes(b"\0")
    write_prepared(repo / "data" / "processed" / "smoke" / "ph2-dermoscopy", seed=1)
    (repo / "data" / "splits" / "kvasir-seg.json").write_text("{}\n")
    (repo / "notes.txt").write_text("untracked, outside every dependency\n")
    assert commit_of(repo) == head
    git(repo, "checkout", "--", "data/splits/kvasir-seg.json")

    def dirty_after(path: str, text: str) -> str:
        target = repo / path
        existed = target.exists()
        original = target.read_text() if existed else None
        target.write_text(text)
        commit = commit_of(repo)
        if existed:
            target.write_text(original)
        else:
            target.unlink()
        assert commit_of(repo) == head
        return commit

    assert dirty_after("code/train.py", "EPOCHS_RULE = 'step'\n") == head + "+dirty"
    assert dirty_after("code/models/new_block.py", "untracked\n") == head + "+dirty"
    assert dirty_after("code/prepare.py", "RESIZE = 'nearest'\n") == head + "+dirty"
    assert dirty_after("data/splits/ph2-dermoscopy.json", "{}\n") == head + "+dirty"
    (repo / "code" / "train.py").write_text("EPOCHS_RULE = 'step'\n")
    git(repo, "add", "code/train.py")
    assert commit_of(repo) == head + "+dirty"  # staged is not committed


def test_commit_is_dirty_when_a_param_of_the_run_differs(repo):
    head = git(repo, "rev-parse", "HEAD")
    original = (repo / "params.yaml").read_text()

    def after(change) -> str:
        edit_params(repo, change)
        commit = commit_of(repo)
        (repo / "params.yaml").write_text(original)
        return commit

    # Keys of other runs or of no stage: this run is still HEAD's.
    assert after(lambda p: p["models"]["tinyunet"].update(n_dwconv=4)) == head
    assert after(lambda p: p["scales"]["cpu"].update(epochs=30)) == head
    assert after(lambda p: p["grids"]["claims"].update(models=["unet", "tinyunet"])) == head
    # `dvc exp run -S scale=smoke` leaves params.yaml at smoke: today's git_commit() did not notice.
    assert after(lambda p: p.update(scale="smoke")) == head + "+dirty"
    assert after(lambda p: p["scales"]["smoke"].update(epochs=3)) == head + "+dirty"
    assert after(lambda p: p["models"]["unet"].update(norm="batch")) == head + "+dirty"
    assert after(lambda p: p["models"].pop("unet")) == head + "+dirty"


def test_custom_dataset_definition_and_dependencies(repo):
    entry = {
        "path": "../datasets/mine",
        "images": "images",
        "masks": "masks",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "polyp"],
        "threshold": 100,
    }
    edit_params(repo, lambda p: p["prepare"]["custom_datasets"].update({CUSTOM: entry}))
    write_prepared(repo / "data" / "processed" / "smoke" / CUSTOM)
    git(repo, "commit", "-q", "-am", "a dataset of my own")
    head = git(repo, "rev-parse", "HEAD")
    identity = identity_of(repo, dataset=CUSTOM)
    assert identity.dataset_definition["custom_entry"] == entry
    assert identity.dataset_definition["mask"] == {"type": "ThresholdMask", "threshold": 100}
    custom_commit = git_commit(repo, CUSTOM, "unet", 0, "smoke")
    assert custom_commit == head
    # The custom dataset's own prepare_custom stage: its entry and its split file are dependencies of its runs.
    edit_params(repo, lambda p: p["prepare"]["custom_datasets"][CUSTOM].update(threshold=90))
    assert git_commit(repo, CUSTOM, "unet", 0, "smoke") == head + "+dirty"
    assert commit_of(repo) == head  # a run on ph2-dermoscopy does not depend on it
    git(repo, "checkout", "--", "params.yaml")
    (repo / "data" / "splits" / f"{CUSTOM}.json").write_text("{}\n")
    assert git_commit(repo, CUSTOM, "unet", 0, "smoke") == head + "+dirty"


def test_a_dataset_is_prepared_by_its_own_kind_of_stage():
    params = {"prepare": {"datasets": ["ph2-dermoscopy"], "custom_datasets": {CUSTOM: {"path": "x"}}}}
    assert prepare_stage("ph2-dermoscopy", "cpu", params) == (
        "prepare",
        {"item": "ph2-dermoscopy", "key": "ph2-dermoscopy", "scale": "cpu"},
    )
    assert prepare_stage(CUSTOM, "smoke", params) == (
        "prepare_custom",
        {"item": CUSTOM, "key": CUSTOM, "scale": "smoke"},
    )
    assert prepare_stage(CUSTOM, "cpu", {"prepare": None})[0] == "prepare"


def test_a_universal_run_depends_on_each_domains_own_prepare_stage(monkeypatch):
    # A user's own volumes as one domain of a universal model: its commit check reads prepare_custom, as a
    # one-domain run's git_commit does, not the built-in prepare stage (which has no such item).
    configs = run.resolve_domains(
        "msd-task04-hippocampus+la2018-atrium-lgemri", "u2net3d_universal", 0, "smoke", None, "out/{dataset}", 1
    )
    params = run.load_params()
    params["prepare"]["custom_datasets"] = {"la2018-atrium-lgemri": {"path": "mine"}}
    checked = []
    monkeypatch.setattr(run, "load_params", lambda path=None: params)
    monkeypatch.setattr(run, "data_files", lambda folder: {})
    monkeypatch.setattr(run, "stages_commit", lambda root, stages: checked.extend(stages) or "head")
    assert run.identify_universal(configs).git_commit == "head"
    assert [stage for stage, _ in checked] == ["train_universal", "prepare", "prepare_custom"]
    assert checked[2][1] == {"item": "la2018-atrium-lgemri", "key": "la2018-atrium-lgemri", "scale": "smoke"}


def test_commit_outside_git_is_unknown(tmp_path):
    assert git_commit(tmp_path, "ph2-dermoscopy", "unet", 0, "smoke") == "unknown"


def test_same_run_resumes_across_commits_and_data_roots(repo, tmp_path):
    saved = identity_of(repo).to_dict()
    (repo / "README.md").write_text("results of other runs\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "other runs")
    current = identity_of(repo)
    assert current.git_commit != saved["git_commit"]
    check_resumable({**saved, "data_root": "/mnt/elsewhere"}, current, tmp_path / "last.pt")


def test_another_run_is_refused_naming_every_field(repo, tmp_path):
    checkpoint = tmp_path / "ckpt" / "last.pt"
    saved = identity_of(repo).to_dict()
    # The same names, other content: the prepared data (same sizes), the code, the preset, the options.
    prepared = repo / "data" / "processed" / "smoke" / "ph2-dermoscopy"
    write_prepared(prepared, seed=1)
    (repo / "code" / "train.py").write_text("EPOCHS_RULE = 'step'\n")
    edit_params(repo, lambda p: (p["scales"]["smoke"].update(epochs=3), p["models"]["unet"].update(norm="batch")))
    current = identity_of(repo)
    with pytest.raises(RunMismatchError) as raised:
        check_resumable(saved, current, checkpoint)
    message = str(raised.value)
    assert message.startswith(
        f"{checkpoint} belongs to another run: it differs from this run in code_files, data_files, options, "
        "scale_settings:"
    )
    assert "scale_settings.epochs: checkpoint 2, this run 3" in message
    assert 'options.norm: checkpoint (absent), this run "batch"' in message
    old_code = saved["code_files"]["code/train.py"]
    assert f'code_files.code/train.py: checkpoint "{old_code}", this run "{md5(repo / "code" / "train.py")}"' in message
    assert "data_files.train_images.npy" in message and "data_files.meta.json" not in message
    assert "git_commit" not in message  # it differs (+dirty) but is not compared
    assert f"rm {checkpoint}" in message
    assert isinstance(raised.value, ValueError)


def test_seed_model_and_dataset_are_compared(repo, tmp_path):
    saved = identity_of(repo).to_dict()
    write_prepared(repo / "data" / "processed" / "smoke" / "kvasir-seg")
    cases = {
        "seed": identity_of(repo, seed=1),
        "model": identity_of(repo, model="tinyunet"),
        "dataset": identity_of(repo, dataset="kvasir-seg"),
    }
    for field, current in cases.items():
        with pytest.raises(RunMismatchError, match=rf"differs from this run in [a-z_, ]*\b{field}\b"):
            check_resumable(saved, current, tmp_path / "last.pt")


def test_checkpoint_without_identity_is_refused(repo, tmp_path):
    current = identity_of(repo)
    with pytest.raises(RunMismatchError, match=r"last.pt belongs to another run: it records no run identity"):
        check_resumable(None, current, tmp_path / "last.pt")
    older = {k: v for k, v in current.to_dict().items() if k != "code_files"}
    with pytest.raises(RunMismatchError, match=r"in code_files:\n  code_files: checkpoint \(absent\)"):
        check_resumable(older, current, tmp_path / "last.pt")


def test_a_checkpoint_of_number_equivalent_code_is_resumed_and_named(repo, tmp_path):
    """Code that the provenance log proves number-equivalent computes the same states, so its checkpoint resumes;
    code without such a proof, or any other difference, is still refused."""
    checkpoint = tmp_path / "last.pt"
    saved = identity_of(repo).to_dict()
    (repo / "code" / "train.py").write_text("# a refactor that changes no number\n")
    current = identity_of(repo)
    old, new = (training_code_version(identity["code_files"]) for identity in (saved, current.to_dict()))
    proven = [{"from_code": old, "to_code": new}]
    with pytest.raises(RunMismatchError, match="differs from this run in code_files"):
        check_resumable(saved, current, checkpoint, log=[])
    assert check_resumable(saved, current, checkpoint, log=proven) == old
    assert check_resumable(current.to_dict(), current, checkpoint, log=proven) is None  # the same code
    with pytest.raises(RunMismatchError, match="differs from this run in code_files"):  # proven forwards only
        check_resumable(current.to_dict(), identity_of_code(saved, current), checkpoint, log=proven)
    with pytest.raises(RunMismatchError, match=r"differs from this run in seed:"):
        check_resumable({**saved, "seed": 1}, current, checkpoint, log=proven)


def identity_of_code(saved: dict, current: RunIdentity) -> RunIdentity:
    """``current`` with the code of ``saved``."""
    return RunIdentity.from_dict({**current.to_dict(), "code_files": saved["code_files"]})


def test_devices_are_named_with_their_index():
    assert normalise_device("cpu") == torch.device("cpu")
    assert normalise_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    expected = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert normalise_device("cuda") == torch.device("cuda", expected)
    assert str(normalise_device("cuda")) == f"cuda:{expected}"

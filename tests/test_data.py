"""The data layer: registry, readers, splits, prepare; bad input fails early with the file named."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repro.config import scale_preset
from repro.data.augment import random_patches
from repro.data.loading import load_prepared
from repro.data.prepare import DEBUG_ENV, prepare_dataset, read_pair, resize_labels
from repro.data.readers import DatasetError, read_image, read_mask
from repro.data.registry import (
    DATA_ROOT_ENV,
    REPO_ROOT,
    ThresholdMask,
    ValueMask,
    check_custom_names,
    get_dataset,
    list_datasets,
    register_folder_dataset,
    resolve_data_root,
)
from repro.data.splits import SPLIT_NAMES, draw_split, load_split, small_split_warnings, write_split
from repro.training.identity import dataset_definition

# Pairs per dataset, from each MANIFEST.txt.
EXPECTED_PAIRS = {
    "dsb2018-nuclei-96": 670,
    "kvasir-seg": 1000,
    "ph2-dermoscopy": 200,
    "isbi2012-em-membrane": 30,
    "covid19-ct-medseg-infnet": 98,
    "drive": 40,
}
SMOKE = scale_preset("smoke")
_names = (f"custom{i}" for i in itertools.count())


def test_registry_covers_every_2d_dataset():
    assert set(EXPECTED_PAIRS) <= set(list_datasets())
    with pytest.raises(ValueError, match="registered: .*kvasir-seg"):
        get_dataset("kvasir")


@pytest.mark.parametrize("name", sorted(EXPECTED_PAIRS))
def test_real_dataset_pairs_and_committed_split(name):
    spec = get_dataset(name)
    samples = spec.samples()
    assert len(samples) == EXPECTED_PAIRS[name]
    split = load_split(spec, samples)
    assert sum(len(split[k]) for k in SPLIT_NAMES) == len(samples)
    # The committed split is exactly what the documented seed draws.
    assert split == draw_split(spec, samples)


def test_official_test_subsets_are_kept():
    for name, n_test in [("drive", 20), ("covid19-ct-medseg-infnet", 48)]:
        spec = get_dataset(name)
        samples = spec.samples()
        split = load_split(spec, samples)
        assert split["test"] == sorted(s.id for s in samples if s.subset == "test")
        assert len(split["test"]) == n_test


@pytest.mark.parametrize("name", sorted(EXPECTED_PAIRS))
def test_real_masks_decode_to_expected_classes(name):
    spec = get_dataset(name)
    sample = spec.samples()[0]
    image, labels, valid = read_pair(spec, sample)
    assert image.shape[-1] == spec.in_channels and image.dtype == np.uint8
    assert labels.max() < spec.num_classes and labels.shape == image.shape[:2]
    assert (valid is not None) == (name == "drive")


def test_em_membrane_is_the_foreground():
    spec = get_dataset("isbi2012-em-membrane")
    sample = spec.samples()[0]
    _, labels, _ = read_pair(spec, sample)
    raw = np.asarray(Image.open(sample.mask))
    np.testing.assert_array_equal(labels == 1, raw == 0)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert resolve_data_root().name == "datasets"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_dataset_error_names_path_source_and_layout(tmp_path):
    spec = get_dataset("kvasir-seg")
    with pytest.raises(DatasetError) as err:
        spec.samples(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "kvasir-seg") in message
    assert "Jha et al." in message and "Kvasir-SEG/images/<id>.jpg" in message


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _custom_dataset(tmp_path, n=6, size=(20, 24)):
    """A tiny folder dataset with n RGB images and {0,255} masks; returns (spec, root)."""
    rng = np.random.default_rng(0)
    name = next(_names)
    folder = tmp_path / name
    for i in range(n):
        _write_png(folder / "img" / f"{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        _write_png(folder / "gt" / f"{i}.png", (rng.random(size) > 0.5).astype(np.uint8) * 255)
    config = {
        "path": str(folder),
        "images": "img",
        "masks": "gt",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "thing"],
        "mask_values": {0: 0, 255: 1},
        "test_fraction": 0.34,
        "val_fraction": 0.17,
    }
    spec = register_folder_dataset(name, config)
    write_split(spec, draw_split(spec, spec.samples()), 0, tmp_path / "splits")
    return spec, tmp_path


def _prepare(spec, root, out):
    return prepare_dataset(spec.name, SMOKE, out, splits_dir=root / "splits")


def test_prepare_is_byte_deterministic(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    digests = []
    for attempt in ("a", "b"):
        out = _prepare(spec, root, tmp_path / attempt)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    images = np.load(tmp_path / "a" / "train_images.npy")
    assert images.shape == (len(meta["ids"]["train"]), SMOKE.image_size, SMOKE.image_size, 3)


def test_missing_image_for_a_mask_is_named(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    (root / spec.name / "img" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"gt/3\.png: mask without an image"):
        _prepare(spec, root, tmp_path / "out")


def test_unreadable_file_is_named(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    (root / spec.name / "img" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"img/2\.png: unreadable image"):
        _prepare(spec, root, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written when the input is bad"


def test_unexpected_mask_values_are_named(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    _write_png(root / spec.name / "gt" / "1.png", np.full((20, 24), 128, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"gt/1\.png: mask has unexpected values \[128\]"):
        _prepare(spec, root, tmp_path / "out")


def test_size_mismatch_is_named(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    _write_png(root / spec.name / "gt" / "4.png", np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"gt/4\.png: mask size \(10, 10\) .* differs from image"):
        _prepare(spec, root, tmp_path / "out")


def test_split_validation(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    samples = spec.samples()
    path = root / "splits" / f"{spec.name}.json"
    document = json.loads(path.read_text())
    document["val"].append(document["train"][0])
    document["test"].append("ghost")
    path.write_text(json.dumps(document))
    with pytest.raises(DatasetError) as err:
        load_split(spec, samples, root / "splits")
    assert "is in both 'train' and 'val'" in str(err.value) and "'ghost' (test) is not in the dataset" in str(err.value)
    path.unlink()
    with pytest.raises(DatasetError, match="no split file"):
        load_split(spec, samples, root / "splits")


def test_resize_labels_keeps_class_indices():
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[10:30, 10:20] = 1
    labels[10:30, 20:30] = 2
    small = resize_labels(labels, 3, (20, 20))
    assert set(np.unique(small)) == {0, 1, 2}
    np.testing.assert_array_equal(small[5:15, 5:10], 1)
    np.testing.assert_array_equal(small[5:15, 10:15], 2)


def _config(folder=REPO_ROOT / "elsewhere", **overrides):
    """A valid custom dataset entry (PNG images in ``folder``/img/, masks in gt/), with ``overrides``."""
    config = {
        "path": str(folder),
        "images": "img",
        "masks": "gt",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 1,
        "class_names": ["background", "thing"],
    }
    return {**config, **({} if "mask_values" in overrides else {"threshold": 127}), **overrides}


def test_unknown_key_is_named_with_the_known_keys():
    with pytest.raises(DatasetError) as err:
        register_folder_dataset(next(_names), _config(thresold=200))
    message = str(err.value)
    assert "unknown key 'thresold' (did you mean 'threshold'?)" in message
    assert "optional: mask_suffix, mask_pattern, threshold, mask_values" in message and "large_images" in message


def test_bad_values_are_all_reported_at_once():
    config = _config(in_channels=4, image_suffix="png", val_fraction=0.6, test_fraction=0.5, group={"video": "x"})
    del config["threshold"]
    with pytest.raises(DatasetError) as err:
        register_folder_dataset("bad.name", config)
    message = str(err.value)
    for expected in (
        "the name must be letters",
        "image_suffix must be a file suffix with its dot",
        "in_channels must be 1 (grayscale) or 3 (RGB), got 4",
        "give exactly one of 'threshold'",
        "val_fraction + test_fraction must leave pairs",
        "group must be {regex: <pattern>} or {csv: <file>}",
    ):
        assert expected in message


def test_a_custom_dataset_may_not_take_a_built_in_name():
    with pytest.raises(DatasetError, match=r"\['kvasir-seg'\] are names of built-in datasets"):
        check_custom_names({"kvasir-seg": _config(), "mine": _config()})
    check_custom_names({"mine": _config()})


def test_empty_images_folder_is_one_clear_error(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    for image in (root / spec.name / "img").iterdir():
        image.unlink()
    with pytest.raises(DatasetError) as err:
        spec.samples()
    assert str(err.value) == f"{root / spec.name / 'img'}: no .png files; the folder is empty"
    (root / spec.name / "img" / "0.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"img: no \.png files; it holds 1 x \.jpg \(check `image_suffix`\)"):
        spec.samples()


# --- 16-bit and float images ---------------------------------------------------------------------------------


def _gradient16(size=(32, 40)):
    """A 16-bit gradient over the whole range: Pillow's own conversion to 8 bits saturates 99.6% of it."""
    return np.linspace(0, 65535, size[0] * size[1]).round().astype(np.uint16).reshape(size)


def test_16bit_image_is_scaled_by_bit_depth_not_clipped(tmp_path):
    values = _gradient16()
    _write_png(tmp_path / "g16.png", values)
    image = read_image(tmp_path / "g16.png", 1)
    np.testing.assert_array_equal(image[..., 0], np.rint(values / 65535 * 255).astype(np.uint8))
    assert (image == 255).mean() < 0.01
    assert read_image(tmp_path / "g16.png", 3).shape == (32, 40, 3)


def test_16bit_image_min_max_and_fixed_range(tmp_path):
    values = (np.arange(32 * 40).reshape(32, 40) + 1000).astype(np.uint16)  # 12-bit data: 1000..2279
    _write_png(tmp_path / "g12.png", values)
    stretched = read_image(tmp_path / "g12.png", 1, "min_max")[..., 0]
    assert (stretched.min(), stretched.max()) == (0, 255)
    fixed = read_image(tmp_path / "g12.png", 1, (0.0, 4095.0))[..., 0]
    np.testing.assert_array_equal(fixed, np.rint(values / 4095 * 255).astype(np.uint8))
    with pytest.raises(DatasetError, match=r"g12\.png: 279 pixel\(s\) outside the dataset's intensity range"):
        read_image(tmp_path / "g12.png", 1, (0.0, 2000.0))


def test_float_image_needs_a_rule(tmp_path):
    Image.fromarray(np.linspace(-1, 3, 200, dtype=np.float32).reshape(10, 20)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match=r"f\.tif: floating-point image, which has no bit depth; set `intensity"):
        read_image(tmp_path / "f.tif", 1)
    image = read_image(tmp_path / "f.tif", 1, "min_max")[..., 0]
    assert (image[0, 0], image[-1, -1]) == (0, 255)


def test_16bit_masks_keep_their_values(tmp_path):
    binary = np.zeros((16, 16), dtype=np.uint16)
    binary[4:12, 4:12] = 65535
    classes = (np.arange(256).reshape(16, 16) % 3).astype(np.uint16)
    _write_png(tmp_path / "binary.png", binary)
    _write_png(tmp_path / "classes.png", classes)
    raw = read_mask(tmp_path / "binary.png")
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(ThresholdMask(127).to_labels(raw, tmp_path), binary > 0)
    np.testing.assert_array_equal(
        ValueMask({0: 0, 1: 1, 2: 2}).to_labels(read_mask(tmp_path / "classes.png"), tmp_path), classes
    )
    with pytest.raises(DatasetError, match=r"unexpected values \[65535\]; expected only \[0, 1\]"):
        ValueMask({0: 0, 1: 1}).to_labels(raw, tmp_path / "binary.png")
    Image.fromarray(binary.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DatasetError, match=r"float\.tif: floating-point mask"):
        read_mask(tmp_path / "float.tif")


def test_16bit_dataset_prepares_faithfully(tmp_path):
    """16-bit images and 16-bit {0, 65535} masks through prepare: neither is saturated nor emptied."""
    name = next(_names)
    for i in range(6):
        _write_png(tmp_path / name / "img" / f"{i}.png", _gradient16((64, 64)))
        mask = np.zeros((64, 64), dtype=np.uint16)
        mask[16:48, 16:48] = 65535
        _write_png(tmp_path / name / "gt" / f"{i}.png", mask)
    spec = register_folder_dataset(name, _config(tmp_path / name, mask_values={0: 0, 65535: 1}))
    write_split(spec, draw_split(spec, spec.samples()), 0, tmp_path / "splits")
    out = _prepare(spec, tmp_path, tmp_path / "out")
    images, masks = np.load(out / "train_images.npy"), np.load(out / "train_masks.npy")
    assert images.dtype == np.uint8 and images.min() == 0 and images.max() == 255
    assert 0.4 < (images > 127).mean() < 0.6, "a faithful gradient is half bright, not all white"
    assert masks[:, 16:48, 16:48].all() and masks.mean() == pytest.approx(0.25)


# --- large images with a field-of-view mask ------------------------------------------------------------------


def _large_dataset(tmp_path, name, n=6, size=(300, 260)):
    """Images with one-pixel vertical lines (the structures a resize to 64x64 erases) inside a circular FOV."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    fov = ((yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < (min(size) / 2.2) ** 2).astype(np.uint8) * 255
    for i in range(n):
        lines = np.zeros(size, dtype=np.uint8)
        lines[:, 20 + i :: 8] = 255
        _write_png(tmp_path / name / "images" / f"eye{i}.png", np.stack([lines // 2, lines, lines // 3], -1))
        _write_png(tmp_path / name / "labels" / f"eye{i}.png", lines)
        _write_png(tmp_path / name / "fov" / f"eye{i}.png", fov)
    config = {
        "path": str(tmp_path / name),
        "images": "images",
        "masks": "labels",
        "image_suffix": ".png",
        "mask_suffix": ".png",
        "in_channels": 3,
        "class_names": ["background", "vessel"],
        "mask_values": {0: 0, 255: 1},
        "large_images": True,
        "fov_masks": "fov",
    }
    return config


def test_large_custom_dataset_keeps_its_aspect_and_field_of_view(tmp_path):
    name = next(_names)
    spec = register_folder_dataset(name, _large_dataset(tmp_path, name))
    assert spec.large_images and spec.samples()[0].valid == tmp_path / name / "fov" / "eye0.png"
    write_split(spec, draw_split(spec, spec.samples()), 0, tmp_path / "splits")
    out = _prepare(spec, tmp_path, tmp_path / "out")
    data = load_prepared(out)
    assert data.large_images and data.train.valid is not None
    # Kept at the native aspect, scaled by large_image_scale (smoke: 0.25), not squeezed to image_size.
    assert tuple(data.train.images.shape[-2:]) == (75, 65)
    assert 0.5 < data.train.valid.float().mean() < 0.8
    # The training batches are random patches of the scale's patch size.
    patches = random_patches(data.train, SMOKE.patch_size, 2, torch.Generator().manual_seed(0))
    assert tuple(patches.images.shape[-2:]) == (SMOKE.patch_size, SMOKE.patch_size)


def test_missing_or_empty_field_of_view_is_named(tmp_path):
    name = next(_names)
    spec = register_folder_dataset(name, _large_dataset(tmp_path, name))
    write_split(spec, draw_split(spec, spec.samples()), 0, tmp_path / "splits")
    _write_png(tmp_path / name / "fov" / "eye2.png", np.ones((300, 260), dtype=np.uint8))  # a {0, 1} FOV mask
    with pytest.raises(DatasetError, match=r"fov/eye2\.png: field-of-view mask has no pixel inside"):
        _prepare(spec, tmp_path, tmp_path / "out")
    (tmp_path / name / "fov" / "eye2.png").unlink()
    with pytest.raises(DatasetError, match=r"eye2\.png: no field-of-view mask .*fov/eye2\.png"):
        spec.samples()


def test_large_images_of_several_sizes_are_refused_clearly(tmp_path):
    name = next(_names)
    spec = register_folder_dataset(name, _large_dataset(tmp_path, name, n=9))
    write_split(spec, {"train": [f"eye{i}" for i in range(7)], "val": ["eye7"], "test": ["eye8"]}, 0, tmp_path / "s")
    for folder in ("images", "labels", "fov"):
        path = tmp_path / name / folder / "eye3.png"
        _write_png(path, np.asarray(Image.open(path))[:200])
    with pytest.raises(DatasetError, match=r"split 'train': large_images keeps each image's size.*50x65 \(eye3\)"):
        prepare_dataset(name, SMOKE, tmp_path / "out", splits_dir=tmp_path / "s")


# --- grouped splits ------------------------------------------------------------------------------------------


def _video_frames(tmp_path, name, videos=29, frames=612):
    """612 frames cut from 29 videos (as in the colonoscopy example of docs/datasets.md, "Grouped splits"), ids
    video<v>_frame<k>."""
    per_video = np.array_split(np.arange(frames), videos)
    ids = [f"video{v:02d}_frame{k:03d}" for v, ks in enumerate(per_video) for k in ks]
    for folder in ("img", "gt"):
        (tmp_path / name / folder).mkdir(parents=True)
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    _write_png(image, np.zeros((8, 8), dtype=np.uint8))
    _write_png(mask, np.zeros((8, 8), dtype=np.uint8))
    for sample_id in ids:  # links: 612 pairs on disk in a blink
        (tmp_path / name / "img" / f"{sample_id}.png").symlink_to(image)
        (tmp_path / name / "gt" / f"{sample_id}.png").symlink_to(mask)
    return ids


def _assert_grouped(split, group_of):
    splits_of = {}
    for split_name, ids in split.items():
        for sample_id in ids:
            splits_of.setdefault(group_of(sample_id), set()).add(split_name)
    assert all(len(names) == 1 for names in splits_of.values()), "a group straddles two splits"
    assert all(split[k] for k in SPLIT_NAMES)


def test_group_regex_keeps_each_video_in_one_split(tmp_path):
    name = next(_names)
    ids = _video_frames(tmp_path, name)
    spec = register_folder_dataset(name, _config(tmp_path / name, group={"regex": r"^(video\d+)_"}))
    samples = spec.samples()
    split = draw_split(spec, samples)
    _assert_grouped(split, lambda i: i.split("_")[0])
    assert sorted(sum(split.values(), [])) == ids
    assert 0.15 < len(split["test"]) / len(ids) < 0.3
    # Ungrouped, the same dataset's frames of one video land in several splits.
    plain = draw_split(register_folder_dataset(next(_names), _config()), samples)
    with pytest.raises(AssertionError, match="straddles"):
        _assert_grouped(plain, lambda i: i.split("_")[0])
    # A committed frame-wise split of a grouped dataset is refused on load.
    write_split(spec, plain, 0, tmp_path / "splits")
    with pytest.raises(DatasetError, match=r"group 'video\d\d' straddles \[.*\]; redraw the split"):
        load_split(spec, samples, tmp_path / "splits")
    write_split(spec, split, 0, tmp_path / "splits")
    assert load_split(spec, samples, tmp_path / "splits") == split
    assert "whole groups drawn" in (tmp_path / "splits" / f"{name}.json").read_text()


def test_group_csv_maps_ids_to_groups(tmp_path):
    name = next(_names)
    ids = _video_frames(tmp_path, name, videos=5, frames=40)
    video_of = {sample_id: f"patient{int(sample_id[5:7]) % 4}" for sample_id in ids}  # 4 patients
    rows = ["id,group", *(f"{i},{g}" for i, g in video_of.items())]
    (tmp_path / name / "groups.csv").write_text("\n".join(rows) + "\n")
    spec = register_folder_dataset(name, _config(tmp_path / name, group={"csv": "groups.csv"}))
    samples = spec.samples()
    assert {s.group for s in samples} == {"patient0", "patient1", "patient2", "patient3"}
    _assert_grouped(draw_split(spec, samples), video_of.get)
    (tmp_path / name / "groups.csv").write_text("\n".join(rows[:-1] + ["ghost,patient9"]) + "\n")
    with pytest.raises(DatasetError) as err:
        spec.samples()
    assert f"id '{ids[-1]}' has no row" in str(err.value) and "row id 'ghost' is not an id on disk" in str(err.value)


def test_group_regex_must_match_every_id_and_groups_must_suffice(tmp_path):
    name = next(_names)
    _video_frames(tmp_path, name, videos=2, frames=10)
    spec = register_folder_dataset(name, _config(tmp_path / name, group={"regex": r"^video(\d+)_"}))
    with pytest.raises(DatasetError, match="2 group.s. cannot fill train, val and test"):
        draw_split(spec, spec.samples())
    spec = register_folder_dataset(next(_names), _config(tmp_path / name, group={"regex": r"^clip\d+"}))
    with pytest.raises(DatasetError, match=r"group regex '\^clip\\\\d\+' matches no part of 10 id\(s\)"):
        spec.samples()


# --- where a custom dataset lies, and how its masks are named --------------------------------------------------


def _annotated_eyes(folder, subjects=3, size=(30, 40)):
    """Photographs of both eyes of ``subjects`` subjects in one folder, each with two annotators' masks beside it
    (``Image_01L.jpg``, ``Image_01L_1stHO.png``, ``Image_01L_2ndHO.png``). The second annotator's masks have
    another size: a dataset that read them as masks would fail."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for subject in range(1, subjects + 1):
        for eye in "LR":
            stem = f"Image_{subject:02d}{eye}"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{stem}.jpg")
            _write_png(folder / f"{stem}_1stHO.png", (rng.random(size) > 0.5).astype(np.uint8) * 255)
            _write_png(folder / f"{stem}_2ndHO.png", np.zeros((5, 5), dtype=np.uint8))


def _eyes_config(folder, **overrides):
    """The entry of :func:`_annotated_eyes`'s folder: images and masks in it, the first annotator's masks."""
    config = {
        "path": str(folder),
        "images": ".",
        "masks": ".",
        "image_suffix": ".jpg",
        "mask_pattern": "{stem}_1stHO.png",
        "in_channels": 3,
        "class_names": ["background", "vessel"],
        "threshold": 127,
    }
    return {**config, **overrides}


def test_a_custom_dataset_lies_where_its_path_says(tmp_path):
    folder = tmp_path / "anywhere" / "eyes"
    _annotated_eyes(folder)
    absolute = register_folder_dataset(next(_names), _eyes_config(folder))
    relative = register_folder_dataset(next(_names), _eyes_config(os.path.relpath(folder, REPO_ROOT)))
    assert not Path(relative.path).is_absolute()
    for spec in (absolute, relative):
        # The data root places the built-in datasets only: a custom dataset is found at its path whatever it is.
        assert [s.image for s in spec.samples(tmp_path / "data-root")] == sorted(folder.glob("*.jpg"))
    missing = register_folder_dataset(next(_names), _eyes_config(tmp_path / "gone"))
    with pytest.raises(DatasetError) as err:
        missing.samples()
    assert f"dataset '{missing.name}' not found at {tmp_path / 'gone'}." in str(err.value)
    assert f"The folder is `path` of prepare.custom_datasets.{missing.name} in params.yaml" in str(err.value)


def test_an_entry_without_its_path_is_refused_with_the_line_to_write():
    config = _config()
    del config["path"]
    name = next(_names)
    with pytest.raises(DatasetError) as err:
        register_folder_dataset(name, config)
    assert "missing key(s) ['path']" in str(err.value) and f"path: ../shared/datasets/{name})" in str(err.value)
    with pytest.raises(DatasetError, match="path must be a folder, absolute or relative to the repository root"):
        register_folder_dataset(next(_names), _config("~/data/eyes"))


def test_mask_pattern_pairs_each_image_with_one_annotators_mask(tmp_path):
    _annotated_eyes(tmp_path / "eyes")
    spec = register_folder_dataset(next(_names), _eyes_config(tmp_path / "eyes"))
    samples = spec.samples()
    assert [s.id for s in samples] == [f"Image_0{i}{eye}" for i in (1, 2, 3) for eye in "LR"]
    assert all(s.mask == tmp_path / "eyes" / f"{s.id}_1stHO.png" for s in samples)
    write_split(spec, draw_split(spec, samples), 0, tmp_path / "splits")
    assert np.load(_prepare(spec, tmp_path, tmp_path / "out") / "train_masks.npy").any()


def test_mask_suffix_is_the_pattern_of_the_stem_and_that_suffix(tmp_path):
    spec, root = _custom_dataset(tmp_path)
    suffix = register_folder_dataset(next(_names), _config(root / spec.name))
    pattern = _config(root / spec.name, mask_pattern="{stem}.png")
    del pattern["mask_suffix"]
    assert register_folder_dataset(next(_names), pattern).samples() == suffix.samples() == spec.samples()


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("segmentation.png", "mask_pattern must hold {stem} once, where the image's file stem goes"),
        ("{stem}_{stem}.png", "mask_pattern must hold {stem} once"),
        ("{stem}_{annotator}.png", "mask_pattern may hold no braces but those of {stem}"),
        ("gt/{stem}.png", "mask_pattern is a file name in the `masks` folder, without a folder"),
        ("{stem}_seg", "mask_pattern must end with a file suffix such as .png"),
    ],
)
def test_a_bad_mask_pattern_is_named(pattern, problem):
    config = _config(mask_pattern=pattern)
    del config["mask_suffix"]
    with pytest.raises(DatasetError) as err:
        register_folder_dataset(next(_names), config)
    assert f"{problem}" in str(err.value) and f"(got {pattern!r})" in str(err.value)


def test_a_mask_is_named_by_a_suffix_or_by_a_pattern_not_both():
    neither = _config()
    del neither["mask_suffix"]
    for config in (neither, _config(mask_pattern="{stem}.png")):
        with pytest.raises(DatasetError, match="give exactly one of 'mask_suffix' .* or 'mask_pattern'"):
            register_folder_dataset(next(_names), config)


def test_an_image_without_its_mask_names_the_image_and_the_mask_expected(tmp_path):
    eyes = tmp_path / "eyes"
    _annotated_eyes(eyes)
    (eyes / "Image_02R_1stHO.png").unlink()
    spec = register_folder_dataset(next(_names), _eyes_config(eyes))
    with pytest.raises(DatasetError) as err:
        spec.samples()
    assert str(err.value) == (
        f"unpaired files (masks named {{stem}}_1stHO.png in {eyes}): {eyes / 'Image_02R.jpg'}: no mask "
        f"{eyes / 'Image_02R_1stHO.png'}"
    )
    spec = register_folder_dataset(next(_names), _eyes_config(eyes, mask_pattern="{stem}_expert1.png"))
    with pytest.raises(DatasetError) as err:
        spec.samples()
    assert str(err.value) == (
        f"{eyes}: no files named {{stem}}_expert1.png; it holds 6 x .jpg, 11 x .png (check `mask_suffix` or "
        f"`mask_pattern`)"
    )


# --- small splits, failing prepares, the recorded definitions ----------------------------------------------------


def test_a_small_split_is_warned_about_naming_its_size_and_the_fix(tmp_path, capsys):
    eyes = tmp_path / "eyes"
    _annotated_eyes(eyes, subjects=5)  # 10 images: 1 subject (2 images) in each of val and test
    spec = register_folder_dataset(next(_names), _eyes_config(eyes, group={"regex": r"^(Image_\d+)"}))
    samples = spec.samples()
    split = draw_split(spec, samples)
    assert [len(split[k]) for k in SPLIT_NAMES] == [6, 2, 2]
    redraw = f"and redraw the split (python -m repro.data.prepare --draw-split {spec.name})"
    assert small_split_warnings(spec, samples, split) == [
        f"warning: split '{name}' of '{spec.name}' holds 2 image(s) of 1 group(s), fewer than 5 images or 2 groups: "
        f"its scores rest on too few; add images, or raise {key} in params.yaml prepare.custom_datasets.{spec.name} "
        f"{redraw}"
        for name, key in (("val", "val_fraction"), ("test", "test_fraction"))
    ]
    write_split(spec, split, 0, tmp_path / "splits")
    capsys.readouterr()
    _prepare(spec, tmp_path, tmp_path / "out")
    assert capsys.readouterr().err.splitlines() == small_split_warnings(spec, samples, split)
    # 30 images of 15 subjects, a quarter for validation: every split holds at least 6 images of 3 subjects.
    _annotated_eyes(eyes, subjects=15)
    spec = register_folder_dataset(
        next(_names), _eyes_config(eyes, group={"regex": r"^(Image_\d+)"}, val_fraction=0.25)
    )
    samples = spec.samples()
    assert small_split_warnings(spec, samples, draw_split(spec, samples)) == []


def test_a_built_in_datasets_small_split_is_reported_as_the_studys():
    spec = get_dataset("isbi2012-em-membrane")
    samples = spec.samples()
    assert small_split_warnings(spec, samples, load_split(spec, samples)) == [
        "warning: split 'val' of 'isbi2012-em-membrane' holds 4 image(s), fewer than 5 images: its scores rest on too "
        "few; it is the split the study's committed runs were scored on, kept as is"
    ]


def _folder_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_failing_prepare_keeps_the_last_good_data(tmp_path, monkeypatch):
    spec, root = _custom_dataset(tmp_path)
    out = _prepare(spec, root, tmp_path / "out")
    good = _folder_bytes(out)
    image = root / spec.name / "img" / "2.png"
    image.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"img/2\.png: unreadable image"):
        _prepare(spec, root, out)
    assert _folder_bytes(out) == good
    # Another good image now, and a disk that fills up after the first array: the half-written folder goes.
    _write_png(image, np.full((20, 24, 3), 7, dtype=np.uint8))
    save, saved = np.save, []

    def save_once(path, array):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(path)
        save(path, array)

    monkeypatch.setattr(np, "save", save_once)
    with pytest.raises(OSError, match="No space left on device"):
        _prepare(spec, root, out)
    assert _folder_bytes(out) == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    monkeypatch.undo()
    assert _folder_bytes(_prepare(spec, root, out)) != good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


# Fields DatasetSpec gained after the first committed runs were recorded, with the value every dataset had before.
ADDED_SINCE = {"volume_downsample": None}
COMMITTED = sorted(REPO_ROOT.glob("results/*/runs/*/*/seed*/metrics.json"))


@pytest.mark.parametrize("name", sorted({path.parts[-4] for path in COMMITTED}))
def test_each_committed_runs_dataset_definition_is_the_registrys(name):
    """A run records its dataset's registry entry (repro.training.identity's ``dataset_definition``); a change to a
    built-in dataset's entry, or a new field of DatasetSpec, would tell every committed run apart from a new one."""
    records = [json.loads(path.read_text()) for path in COMMITTED if path.parts[-4] == name]
    definitions = [record["dataset_definition"] for record in records if "dataset_definition" in record]
    assert definitions or name in ("dsb2018-nuclei-96", "kvasir-seg", "ph2-dermoscopy")  # results/v1 records none
    current = dataset_definition(name, {})
    for definition in definitions:
        assert {**ADDED_SINCE, **definition} == current
        assert set(current) - set(definition) <= set(ADDED_SINCE)


def test_the_committed_definitions_include_the_ph2_and_ct_runs():
    ph2 = json.loads((REPO_ROOT / "results/cpu/runs/ph2-dermoscopy/unet/seed0/metrics.json").read_text())
    ct = json.loads((REPO_ROOT / "results/cpu/runs/covid19-ct-medseg-infnet/tinyunet/seed0/metrics.json").read_text())
    assert {**ADDED_SINCE, **ph2["dataset_definition"]} == dataset_definition("ph2-dermoscopy", {})
    assert ct["dataset_definition"] == dataset_definition("covid19-ct-medseg-infnet", {})


# --- the command line ----------------------------------------------------------------------------------------


def test_command_line_errors_end_in_one_line_without_traceback():
    command = [sys.executable, "-m", "repro.data.prepare", "no-such-dataset"]
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unknown dataset 'no-such-dataset'; registered:")
    assert len(result.stderr.strip().splitlines()) == 1
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DatasetError: unknown dataset" in debug.stderr
    env[DEBUG_ENV] = "1"
    assert "Traceback" in subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT).stderr

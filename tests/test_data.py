"""The data layer: registry, readers, splits, prepare; bad input fails early with the file named."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from repro.config import scale_preset
from repro.data.prepare import prepare_dataset, read_pair, resize_labels
from repro.data.readers import DatasetError
from repro.data.registry import (
    DATA_ROOT_ENV,
    get_dataset,
    list_datasets,
    register_folder_dataset,
    resolve_data_root,
)
from repro.data.splits import SPLIT_NAMES, draw_split, load_split, write_split

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
    write_split(spec, draw_split(spec, spec.samples(tmp_path)), 0, tmp_path / "splits")
    return spec, tmp_path


def _prepare(spec, root, out):
    return prepare_dataset(spec.name, SMOKE, out, data_root=root, splits_dir=root / "splits")


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
    samples = spec.samples(root)
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

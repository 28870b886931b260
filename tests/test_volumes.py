"""3D datasets (MSD Hippocampus): NIfTI reading, the committed split, per-case z-score, centring in a fixed shape,
bad input named before anything is written, and a byte-deterministic prepare."""

from __future__ import annotations

import hashlib
import itertools
import json

import nibabel
import numpy as np
import pytest

from repro.config import scale_preset
from repro.data.prepare import centre_in, prepare_dataset, read_volume_pair, zscore
from repro.data.readers import DatasetError
from repro.data.registry import REPO_ROOT, DatasetSpec, ValueMask, get_dataset, paired_folders, register
from repro.data.splits import SPLIT_NAMES, draw_split, load_split, write_split

HIPPOCAMPUS = "msd-task04-hippocampus"
SMOKE = scale_preset("smoke")
_names = (f"volumes{i}" for i in itertools.count())


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_hippocampus_registry_entry_and_committed_split():
    spec = get_dataset(HIPPOCAMPUS)
    assert (spec.ndim, spec.class_names, spec.in_channels) == (3, ("background", "anterior", "posterior"), 1)
    samples = spec.samples()
    assert len(samples) == 260  # MANIFEST.txt: 260 pairs
    split = load_split(spec, samples)
    assert {k: len(split[k]) for k in SPLIT_NAMES} == {"train": 182, "val": 26, "test": 52}
    # The committed split is exactly what the documented seed draws.
    assert split == draw_split(spec, samples)


def test_hippocampus_volume_shape_holds_every_case():
    spec = get_dataset(HIPPOCAMPUS)
    shapes = np.array([nibabel.load(str(s.image)).shape for s in spec.samples()])
    assert (shapes.max(axis=0) <= spec.volume_shape).all(), "the docstrings say no case is cropped"
    assert all(n % 16 == 0 for n in spec.volume_shape)


def test_hippocampus_prepare_is_byte_deterministic(tmp_path):
    """The real data, prepared twice: identical bytes; shape, normalisation and padding as documented."""
    out = [prepare_dataset(HIPPOCAMPUS, SMOKE, tmp_path / attempt) for attempt in ("a", "b")]
    assert _digests(out[0]) == _digests(out[1])
    meta = json.loads((out[0] / "meta.json").read_text())
    assert meta["ndim"] == 3 and meta["cases_cropped"] == 0 and meta["labelled_voxels_lost"] == 0
    images = np.load(out[0] / "val_images.npy")
    masks, valid = np.load(out[0] / "val_masks.npy"), np.load(out[0] / "val_valid.npy")
    assert images.shape == (26, 48, 64, 48, 1) and images.dtype == np.float32
    assert masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1, 2}
    assert not masks[~valid].any() and not images[..., 0][~valid].any()
    spec = get_dataset(HIPPOCAMPUS)
    first = next(s for s in spec.samples() if s.id == meta["ids"]["val"][0])
    native = nibabel.load(str(first.image)).shape
    assert valid[0].sum() == np.prod(native)
    inside = images[0, ..., 0][valid[0]].astype(np.float64)
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-5


# --- synthetic NIfTI volumes -------------------------------------------------------------------------------------


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.Nifti1Image(array, np.eye(4)).to_filename(str(path))


def _volume_dataset(tmp_path, n=6, shape=(6, 7, 5), volume_shape=(8, 8, 8)):
    """``n`` random image/label pairs of ``shape`` below ``tmp_path/<name>/{images,labels}``, with a split."""
    rng = np.random.default_rng(0)
    name = next(_names)
    for i in range(n):
        _save(tmp_path / name / "images" / f"case_{i}.nii.gz", rng.integers(0, 1000, shape).astype(np.int16))
        _save(tmp_path / name / "labels" / f"case_{i}.nii.gz", rng.integers(0, 3, shape).astype(np.uint8))
    spec = register(
        DatasetSpec(
            name=name,
            title=name,
            source="synthetic",
            layout="images/*.nii.gz, labels/*.nii.gz",
            class_names=("background", "a", "b"),
            in_channels=1,
            list_samples=paired_folders("images", "labels", image_suffix=".nii.gz", mask_pattern="{stem}.nii.gz"),
            mask=ValueMask({0: 0, 1: 1, 2: 2}),
            ndim=3,
            volume_shape=volume_shape,
        )
    )
    write_split(spec, draw_split(spec, spec.samples(tmp_path)), 0, tmp_path / "splits")
    return spec, tmp_path / name


def _prepare(spec, tmp_path, out="out"):
    return prepare_dataset(spec.name, SMOKE, tmp_path / out, data_root=tmp_path, splits_dir=tmp_path / "splits")


def test_synthetic_prepare_is_byte_deterministic_and_centres_each_volume(tmp_path):
    spec, folder = _volume_dataset(tmp_path)
    first, second = _prepare(spec, tmp_path, "a"), _prepare(spec, tmp_path, "b")
    assert _digests(first) == _digests(second)
    meta = json.loads((first / "meta.json").read_text())
    case = meta["ids"]["train"][0]
    raw = np.asarray(nibabel.load(str(folder / "labels" / f"{case}.nii.gz")).dataobj)
    masks, valid = np.load(first / "train_masks.npy"), np.load(first / "train_valid.npy")
    # 6x7x5 in 8x8x8: one voxel before on axis 0, none before on axis 1 (the odd extra voxel goes after), 1 on 2.
    np.testing.assert_array_equal(masks[0, 1:7, 0:7, 1:6], raw)
    assert valid[0].sum() == raw.size and valid[0, 1:7, 0:7, 1:6].all()
    assert meta["cases_cropped"] == 0 and meta["volume_shape"] == [8, 8, 8]


def test_cropping_is_reported_with_the_labelled_voxels_it_removes(tmp_path):
    spec, folder = _volume_dataset(tmp_path, shape=(10, 8, 8))
    meta = json.loads((_prepare(spec, tmp_path) / "meta.json").read_text())
    assert meta["cases_cropped"] == 6
    for case, crop in meta["cropped"].items():
        raw = np.asarray(nibabel.load(str(folder / "labels" / f"{case}.nii.gz")).dataobj)
        # Centred: the first and the last slice of axis 0 are cut.
        lost = np.count_nonzero(raw[0]) + np.count_nonzero(raw[-1])
        assert crop == {"native_shape": [10, 8, 8], "voxels_cut": [2, 0, 0], "labelled_voxels_lost": lost}
    assert meta["labelled_voxels_lost"] == sum(c["labelled_voxels_lost"] for c in meta["cropped"].values()) > 0


def test_label_shape_differing_from_its_image_is_named(tmp_path):
    spec, folder = _volume_dataset(tmp_path)
    _save(folder / "labels" / "case_2.nii.gz", np.zeros((6, 7, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"labels/case_2\.nii\.gz: label shape \(6, 7, 4\) differs from image"):
        _prepare(spec, tmp_path)
    assert not (tmp_path / "out").exists(), "nothing is written when a pair is bad"


def test_label_value_outside_the_classes_is_named(tmp_path):
    spec, folder = _volume_dataset(tmp_path)
    labels = np.zeros((6, 7, 5), dtype=np.uint8)
    labels[1, 1, 1] = 3
    _save(folder / "labels" / "case_4.nii.gz", labels)
    with pytest.raises(DatasetError, match=r"labels/case_4\.nii\.gz: mask has unexpected values \[3\]"):
        _prepare(spec, tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.full((6, 7, 5), 1.5, dtype=np.float32), "not whole numbers"), (np.full((6, 7, 5), -1, np.int16), "negative")],
)
def test_fractional_or_negative_labels_are_named(tmp_path, values, message):
    spec, folder = _volume_dataset(tmp_path)
    _save(folder / "labels" / "case_1.nii.gz", values)
    with pytest.raises(DatasetError, match=rf"labels/case_1\.nii\.gz: .*{message}"):
        _prepare(spec, tmp_path)


def test_whole_float_labels_are_read_as_classes(tmp_path):
    """Two of Hippocampus's label files are float32 holding 0., 1., 2."""
    spec, folder = _volume_dataset(tmp_path)
    labels = np.asarray(nibabel.load(str(folder / "labels" / "case_0.nii.gz")).dataobj)
    _save(folder / "labels" / "case_0.nii.gz", labels.astype(np.float32))
    sample = next(s for s in spec.samples(tmp_path) if s.id == "case_0")
    _, read = read_volume_pair(spec, sample)
    np.testing.assert_array_equal(read, labels)


@pytest.mark.parametrize("content", [b"not a nifti file", b"\x1f\x8b\x08\x00truncated gzip"])
def test_nifti_that_does_not_load_is_named(tmp_path, content):
    spec, folder = _volume_dataset(tmp_path)
    (folder / "images" / "case_3.nii.gz").write_bytes(content)
    with pytest.raises(DatasetError, match=r"images/case_3\.nii\.gz: unreadable NIfTI volume"):
        _prepare(spec, tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_4d_file_and_a_constant_volume_are_named(tmp_path):
    spec, folder = _volume_dataset(tmp_path)
    _save(folder / "images" / "case_0.nii.gz", np.zeros((6, 7, 5, 2), dtype=np.int16))
    _save(folder / "images" / "case_5.nii.gz", np.full((6, 7, 5), 7, dtype=np.int16))
    with pytest.raises(DatasetError, match=r"2 bad pair") as caught:
        _prepare(spec, tmp_path)
    assert "case_0.nii.gz: expected a 3D volume, found shape (6, 7, 5, 2)" in str(caught.value)
    assert "case_5.nii.gz: constant volume (every voxel 7)" in str(caught.value)


def test_zscore_and_centre_in():
    volume = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    scored = zscore(volume, "v.nii")
    expected = (volume - volume.mean()) / volume.std()
    np.testing.assert_allclose(scored, expected, rtol=1e-6)
    assert scored.dtype == np.float32
    padded = centre_in(volume, (4, 3, 2), 255)
    # Axis 0 padded 1 before and 1 after; axis 2 cropped to its middle two.
    np.testing.assert_array_equal(padded[1:3], volume[:, :, 1:3])
    assert (padded[[0, 3]] == 255).all()


def test_a_volume_dataset_needs_its_shape():
    fields = dict(
        title="t",
        source="s",
        layout="l",
        class_names=("background", "x"),
        in_channels=1,
        list_samples=lambda folder: [],
        mask=ValueMask({0: 0, 1: 1}),
    )
    with pytest.raises(ValueError, match="volume_shape is given exactly for 3D datasets"):
        DatasetSpec(name="no-shape", ndim=3, **fields)
    with pytest.raises(ValueError, match="volume_shape is given exactly for 3D datasets"):
        DatasetSpec(name="2d-with-shape", volume_shape=(8, 8, 8), **fields)
    with pytest.raises(ValueError, match="3 positive integers"):
        DatasetSpec(name="bad-shape", ndim=3, volume_shape=(8, 0, 8), **fields)


def test_the_training_notebook_runs_a_volume(tmp_path):
    """The one training path on real volumes: notebooks/train.ipynb at smoke scale with the 3D U-Net on MSD
    Hippocampus (24 training and 12 evaluation volumes, 2 epochs): per-class Dice and the 95th-percentile Hausdorff
    distance per case, for the volume's own input size."""
    import papermill

    out = tmp_path / "run"
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "train.ipynb"),
        str(tmp_path / "train.ipynb"),
        parameters={
            "dataset": "msd-task04-hippocampus",
            "model": "unet3d",
            "scale": "smoke",
            "out_dir": str(out),
            "checkpoint_dir": str(tmp_path / "checkpoint"),
            "threads": 1,
        },
        cwd=str(REPO_ROOT),
        progress_bar=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image_size"] == [48, 64, 48] and metrics["n_images"] == {"train": 24, "val": 12, "test": 12}
    assert set(metrics["test"]["per_class"]) == {"anterior", "posterior"}
    assert "hd95" in metrics["test"] and 0 <= metrics["test"]["hd95_cases"] <= 12
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].endswith("hd95,hd95_anterior,hd95_posterior") and len(rows) == 13

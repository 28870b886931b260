"""LA2018 left atrium (3D LGE-MRI, HDF5): the h5 reader and its errors, the case-folder listing, the fixed
downsampling, a byte-deterministic prepare, the committed split and the real data prepared at smoke scale."""

from __future__ import annotations

import hashlib
import itertools
import json

import h5py
import numpy as np
import pytest

from repro.config import scale_preset
from repro.data.prepare import centre_in, downsample, prepare_dataset, prepare_volume, read_volume_pair
from repro.data.readers import DatasetError, read_h5_volume_pair
from repro.data.registry import DatasetSpec, ValueMask, case_folders, get_dataset, register, resolve_data_root
from repro.data.splits import SPLIT_NAMES, draw_split, load_split, write_split

LA = "la2018-atrium-lgemri"
SMOKE = scale_preset("smoke")
LA_FOLDER = resolve_data_root() / LA
needs_la = pytest.mark.skipif(not LA_FOLDER.is_dir(), reason=f"LA2018 data not found at {LA_FOLDER}")
_names = (f"atrium{i}" for i in itertools.count())


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _write_h5(path, image=None, label=None, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, array in (("image", image), ("label", label), *extra.items()):
            if array is not None:
                handle.create_dataset(key, data=array, compression="gzip")


def _case(rng, shape=(9, 7, 6)):
    """A z-scored-looking float32 image and a binary uint8 label holding a box of foreground."""
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:6, 1:5, 1:4] = 1
    return image, label


def _atrium_dataset(tmp_path, n_train=5, n_test=3, shape=(9, 7, 6), volume_shape=(8, 8, 8)):
    """Cases ``LA2018/<id>/mri_norm2.h5`` below ``tmp_path/<name>``, train.list and test.list (the train list
    names one case more than is on disk, as the real one does), and a drawn split in ``tmp_path/splits``."""
    rng = np.random.default_rng(0)
    name = next(_names)
    folder = tmp_path / name
    ids = {"train": [f"T{i:02d}" for i in range(n_train)], "test": [f"E{i:02d}" for i in range(n_test)]}
    for case in ids["train"] + ids["test"]:
        _write_h5(folder / "LA2018" / case / "mri_norm2.h5", *_case(rng, shape))
    (folder / "train.list").write_text("\n".join([*ids["train"], "NOT_ON_DISK"]) + "\n")
    (folder / "test.list").write_text("\n".join(ids["test"]) + "\n")
    spec = register(
        DatasetSpec(
            name=name,
            title=name,
            source="synthetic",
            layout="LA2018/<id>/mri_norm2.h5",
            class_names=("background", "left atrium"),
            in_channels=1,
            list_samples=case_folders("LA2018", "mri_norm2.h5", test_list="test.list", train_list="train.list"),
            mask=ValueMask({0: 0, 1: 1}),
            ndim=3,
            volume_downsample=(2, 2, 2),
            volume_shape=volume_shape,
        )
    )
    write_split(spec, draw_split(spec, spec.samples(tmp_path)), 0, tmp_path / "splits")
    return spec, folder


def _prepare(spec, tmp_path, out="out"):
    return prepare_dataset(spec.name, SMOKE, tmp_path / out, data_root=tmp_path, splits_dir=tmp_path / "splits")


# --- the reader -----------------------------------------------------------------------------------------------


def test_reader_returns_the_stored_values_shapes_and_types(tmp_path):
    image, label = _case(np.random.default_rng(1))
    path = tmp_path / "case.h5"
    _write_h5(path, image, label)
    read_image, read_label = read_h5_volume_pair(path)
    assert read_image.shape == read_label.shape == (9, 7, 6)
    assert read_image.dtype == np.float64 and read_label.dtype == np.int64
    np.testing.assert_array_equal(read_image, image.astype(np.float64))
    np.testing.assert_array_equal(read_label, label)


def test_the_case_listing_keeps_the_official_subsets(tmp_path):
    spec, _ = _atrium_dataset(tmp_path)
    samples = spec.samples(tmp_path)
    assert [s.id for s in samples] == ["E00", "E01", "E02", "T00", "T01", "T02", "T03", "T04"]
    assert {s.id: s.subset for s in samples}["E01"] == "test" and samples[-1].subset == "train"
    assert all(s.image == s.mask and s.image.name == "mri_norm2.h5" for s in samples)
    split = load_split(spec, samples, tmp_path / "splits")
    assert split["test"] == ["E00", "E01", "E02"]
    assert len(split["val"]) == 1 and len(split["train"]) == 4


# --- bad input: one error naming the file, before anything is written -----------------------------------------


def _case_path(folder, case="T02"):
    return folder / "LA2018" / case / "mri_norm2.h5"


def _expect_error(spec, tmp_path, pattern):
    with pytest.raises(DatasetError, match=pattern):
        _prepare(spec, tmp_path)
    assert not (tmp_path / "out").exists(), "nothing is written when a case is bad"


def test_a_case_folder_without_its_file_is_named(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    _case_path(folder).unlink()
    _expect_error(spec, tmp_path, r"LA2018/T02/mri_norm2\.h5: file not found")


def test_a_missing_file_is_named_by_the_reader(tmp_path):
    with pytest.raises(DatasetError, match=r"gone\.h5: file not found"):
        read_h5_volume_pair(tmp_path / "gone.h5")


def test_a_case_in_neither_list_is_named(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    _write_h5(_case_path(folder, "STRAY"), *_case(np.random.default_rng(2)))
    with pytest.raises(DatasetError, match=r"LA2018/STRAY: case in neither train\.list nor test\.list"):
        spec.samples(tmp_path)


@pytest.mark.parametrize("missing", ["image", "label"])
def test_a_missing_dataset_is_named(tmp_path, missing):
    spec, folder = _atrium_dataset(tmp_path)
    image, label = _case(np.random.default_rng(3))
    kept = {"image": image, "label": label, missing: None}
    _write_h5(_case_path(folder), kept["image"], kept["label"], extra=np.zeros(3))
    _expect_error(spec, tmp_path, rf"LA2018/T02/mri_norm2\.h5: no dataset '{missing}' \(the file holds \[")


def test_label_shape_differing_from_the_image_is_named(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    image, label = _case(np.random.default_rng(4))
    _write_h5(_case_path(folder), image, label[:, :, :5])
    _expect_error(
        spec, tmp_path, r"T02/mri_norm2\.h5: 'label' shape \(9, 7, 5\) differs from 'image' shape \(9, 7, 6\)"
    )


def test_a_label_value_outside_0_1_is_named(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    image, label = _case(np.random.default_rng(5))
    label[0, 0, 0] = 2
    _write_h5(_case_path(folder), image, label)
    _expect_error(spec, tmp_path, r"T02/mri_norm2\.h5: mask has unexpected values \[2\]; expected only \[0, 1\]")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_image_is_named(tmp_path, bad):
    spec, folder = _atrium_dataset(tmp_path)
    image, label = _case(np.random.default_rng(6))
    image[1, 2, 3] = bad
    _write_h5(_case_path(folder), image, label)
    _expect_error(spec, tmp_path, r"T02/mri_norm2\.h5: dataset 'image' holds 1 NaN or infinite value")


def test_fractional_labels_a_2d_image_and_a_foreign_file_are_named(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    image, label = _case(np.random.default_rng(7))
    _write_h5(_case_path(folder, "T00"), image, label.astype(np.float32) / 2)
    _write_h5(_case_path(folder, "T01"), image[0], label[0])
    _case_path(folder, "T03").write_bytes(b"not an hdf5 file")
    with pytest.raises(DatasetError, match=r"3 bad pair") as caught:
        _prepare(spec, tmp_path)
    message = str(caught.value)
    assert "T00/mri_norm2.h5: dataset 'label' holds values that are not whole numbers, e.g. [0.5]" in message
    assert "T01/mri_norm2.h5: dataset 'image': expected a non-empty 3D volume, found shape (7, 6)" in message
    assert "T03/mri_norm2.h5: unreadable HDF5 file" in message


# --- downsampling -------------------------------------------------------------------------------------------


def test_downsample_averages_blocks_and_keeps_labels_binary():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(9, 7, 6))
    labels = (rng.random((9, 7, 6)) < 0.4).astype(np.uint8)
    small_image, small_labels = downsample(image, labels, (2, 2, 2), 2)
    assert small_image.shape == small_labels.shape == (5, 4, 3)  # ceil(n / 2)
    assert small_labels.dtype == np.uint8 and set(np.unique(small_labels)) <= {0, 1}
    np.testing.assert_allclose(small_image[1, 2, 0], image[2:4, 4:6, 0:2].mean(), rtol=1e-12)
    # The last, partial block of an odd axis averages the voxels it holds.
    np.testing.assert_allclose(small_image[4, 3, 2], image[8:9, 6:7, 4:6].mean(), rtol=1e-12)
    # A clear majority decides: 5 of 8 foreground is foreground, 3 of 8 background.
    block = labels[2:4, 4:6, 0:2].sum()
    if block != 4:
        assert small_labels[1, 2, 0] == int(block > 4)


def test_downsample_breaks_ties_by_the_widened_block_then_towards_background():
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[2:4, 2:4, 2] = 1  # block (1, 1, 1) = [2:4]^3: 4 of 8, its widened block [1:5]^3 mostly background
    labels[7:11, 7:11, 7:11] = 1  # block (4, 4, 4) = [8:10]^3 inside a cube of foreground ...
    labels[8:10, 8:10, 9] = 0  # ... with half of it background: 4 of 8, its widened block [7:11]^3 60 of 64
    assert labels[2:4, 2:4, 2:4].sum() == labels[8:10, 8:10, 8:10].sum() == 4
    assert labels[1:5, 1:5, 1:5].sum() < 32 < labels[7:11, 7:11, 7:11].sum()
    _, small = downsample(np.zeros(labels.shape), labels, (2, 2, 2), 2)
    assert small[1, 1, 1] == 0 and small[4, 4, 4] == 1
    # A tie at both scales goes to background (the lower class).
    half = np.zeros((2, 2, 2), dtype=np.uint8)
    half[0] = 1
    assert downsample(np.zeros((2, 2, 2)), half, (2, 2, 2), 2)[1].item() == 0


def test_downsample_is_the_identity_at_factor_1():
    rng = np.random.default_rng(9)
    image, labels = rng.normal(size=(4, 5, 3)), rng.integers(0, 3, (4, 5, 3)).astype(np.uint8)
    small_image, small_labels = downsample(image, labels, (1, 1, 1), 3)
    np.testing.assert_array_equal(small_image, image)
    np.testing.assert_array_equal(small_labels, labels)


def test_prepare_downsamples_records_factor_and_native_shapes_and_is_byte_deterministic(tmp_path):
    spec, folder = _atrium_dataset(tmp_path)
    first, second = _prepare(spec, tmp_path, "a"), _prepare(spec, tmp_path, "b")
    assert _digests(first) == _digests(second)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["downsample"]["factor"] == [2, 2, 2] and meta["volume_shape"] == [8, 8, 8]
    assert meta["native_shape"] == {case: [9, 7, 6] for case in sorted(meta["native_shape"])}
    assert sorted(meta["native_shape"]) == ["E00", "E01", "E02", "T00", "T01", "T02", "T03", "T04"]
    assert meta["cases_cropped"] == 0
    images, masks = np.load(first / "train_images.npy"), np.load(first / "train_masks.npy")
    valid = np.load(first / "train_valid.npy")
    assert images.shape == (4, 8, 8, 8, 1) and images.dtype == np.float32
    assert masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1}
    # 9 x 7 x 6 -> 5 x 4 x 3, centred in 8 x 8 x 8; z-scored over the downsampled voxels.
    assert valid[0].sum() == 5 * 4 * 3 and valid[0, 1:6, 2:6, 2:5].all()
    inside = images[0, ..., 0][valid[0]].astype(np.float64)
    assert abs(inside.mean()) < 1e-6 and abs(inside.std() - 1) < 1e-6
    # The prepared case is its native volume downsampled and centred; the blocks wholly inside the box are labelled.
    sample = next(s for s in spec.samples(tmp_path) if s.id == meta["ids"]["train"][0])
    native_image, native_labels = read_volume_pair(spec, sample)
    expected = downsample(native_image, native_labels, (2, 2, 2), 2)[1]
    np.testing.assert_array_equal(masks[0], centre_in(expected, (8, 8, 8), 0))
    assert expected[1:3, 1, 1].all() and not expected[0].any() and not expected[3:].any()


def test_volumes_larger_than_the_shape_are_cropped_and_reported_with_both_shapes(tmp_path):
    spec, _ = _atrium_dataset(tmp_path, shape=(20, 7, 6), volume_shape=(8, 8, 8))
    meta = json.loads((_prepare(spec, tmp_path) / "meta.json").read_text())
    assert meta["cases_cropped"] == 8
    crop = next(iter(meta["cropped"].values()))
    assert crop["native_shape"] == [20, 7, 6] and crop["downsampled_shape"] == [10, 4, 3]
    assert crop["voxels_cut"] == [2, 0, 0]


def test_volume_downsample_is_checked():
    fields = dict(
        title="t",
        source="s",
        layout="l",
        class_names=("background", "x"),
        in_channels=1,
        list_samples=lambda folder: [],
        mask=ValueMask({0: 0, 1: 1}),
    )
    with pytest.raises(ValueError, match="volume_downsample must be 3 positive integers"):
        DatasetSpec(name="bad-factor", ndim=3, volume_shape=(8, 8, 8), volume_downsample=(2, 0, 2), **fields)
    with pytest.raises(ValueError, match="for 3D datasets only"):
        DatasetSpec(name="2d-factor", volume_downsample=(2, 2, 2), **fields)


# --- the real dataset ---------------------------------------------------------------------------------------


@needs_la
def test_registry_entry_and_committed_split():
    spec = get_dataset(LA)
    assert (spec.ndim, spec.class_names, spec.in_channels) == (3, ("background", "left atrium"), 1)
    assert spec.volume_downsample == (2, 2, 2) and all(n % 16 == 0 for n in spec.volume_shape)
    samples = spec.samples()
    assert len(samples) == 32  # MANIFEST.txt: 32 of the 100 labelled cases
    split = load_split(spec, samples)
    assert {k: len(split[k]) for k in SPLIT_NAMES} == {"train": 9, "val": 3, "test": 20}
    assert split["test"] == sorted((LA_FOLDER / "test.list").read_text().split())
    # The committed split is exactly what the documented seed draws.
    assert split == draw_split(spec, samples)


@needs_la
def test_real_data_prepared_at_smoke_scale(tmp_path):
    """All 32 cases (about 5 s on two cores): every one held by volume_shape, labels binary, z-scored inside."""
    out = prepare_dataset(LA, SMOKE, tmp_path / "la")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cases_cropped"] == 0 and meta["labelled_voxels_lost"] == 0
    assert meta["downsample"]["factor"] == [2, 2, 2] and len(meta["native_shape"]) == 32
    assert all(shape[2] == 88 for shape in meta["native_shape"].values())
    assert 0.95 < meta["downsample"]["labelled_volume_ratio"] < 1.05
    sizes = {k: len(meta["ids"][k]) for k in SPLIT_NAMES}
    for split, n in sizes.items():
        images, masks = np.load(out / f"{split}_images.npy"), np.load(out / f"{split}_masks.npy")
        valid = np.load(out / f"{split}_valid.npy")
        assert images.shape == (n, 128, 80, 48, 1) and images.dtype == np.float32
        assert set(np.unique(masks)) == {0, 1} and not masks[~valid].any()
    spec = get_dataset(LA)
    case = meta["ids"]["test"][0]  # the arrays of the loop's last split
    native = meta["native_shape"][case]
    assert valid[0].sum() == np.prod([-(-n // 2) for n in native])
    inside = images[0, ..., 0][valid[0]].astype(np.float64)
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-5
    # One case again, alone: the same bytes.
    again = prepare_volume(spec, next(s for s in spec.samples() if s.id == case))
    assert again.image.tobytes() == images[0].tobytes() and again.labels.tobytes() == masks[0].tobytes()

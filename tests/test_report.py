"""Tests of the aggregate stage (repro.analysis.run_results, repro.analysis.evaluation, repro.analysis.tables,
repro.analysis.figures, repro.analysis.report)
on synthetic runs written in the training stage's output schema."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from scipy import stats

from repro.analysis import evaluation, figures, report, tables, verdicts
from repro.analysis.claims import CLAIMS, Claim, Comparison
from repro.analysis.run_results import failed_runs, load_runs, training_code_version
from repro.analysis.stats import holm_bonferroni, minimal_detectable_difference, seeds_needed
from repro.config import load_params

# Image offsets and noise sum to zero, so a run's test Dice (mean over images) equals its seed-level Dice.
IMAGE_OFFSETS = np.array([-0.05, -0.02, 0.0, 0.01, 0.02, 0.04])
# Each variant's image noise is this vector rolled by the variant's index in KVASIR_DICE, so that per-image
# differences between compared variants are not constant (which would make the per-image t-test degenerate).
IMAGE_NOISE = np.array([0.004, -0.003, 0.002, -0.004, 0.003, -0.002])
SEED_EFFECTS = np.array([0.010, -0.005, 0.000, 0.004, -0.009])
UNET = 0.80 + SEED_EFFECTS
TINY = np.array([1e-4, -1e-4, 5e-5, -5e-5, 0.0])
# Seed-level test Dice of each variant on "kvasir-seg", built so that every superiority label occurs:
KVASIR_DICE = {
    "unet": UNET,
    "unet_w1": UNET,  # the U-Net of C3 and C4b (at width 1.0)
    "unetpp": UNET + 0.05 + np.array([0.003, -0.002, 0.001, 0.0, -0.002]),  # C1: reproduced (> claimed 1.86 IoU)
    "wide_unet": UNET + 0.08,  # C2: UNet++ significantly worse -> reversed
    "tinyunet": UNET + np.array([0.002, -0.002, 0.001, -0.001, 0.0]),  # C3: ~0, far below +2.8 mIoU: smaller
    "tinyunet_plain": UNET + np.array([0.03, -0.04, 0.02, -0.01, -0.005]),  # C4a: noisy, no D: underpowered
    "unet_cmrf": UNET + 0.001 + TINY,  # C4b: a sure gain far below +0.34 IoU: reproduced, smaller than claimed
    "unetv2_nosdi": UNET,
    "unetv2": UNET + 10 * TINY,  # C5a: ~0 with a tiny spread, no D: detectable, not found -> inconclusive
    "unet_bilinear": UNET,
    "light_unet": UNET + np.array([0.001, -0.001, 0.002, -0.002, 0.0005]),  # C6: equivalent
    "lighter_unet_128": UNET + np.array([0.03, -0.03, 0.025, -0.02, 0.0]),  # C6: too noisy to tell
    "lighter_unet_1": UNET - 0.06 + np.array([0.002, -0.001, 0.0, 0.001, -0.002]),  # C6: clearly worse
}
PARAMS = {"unet": 7_760_000, "unetpp": 9_040_000, "tinyunet": 480_000}
N_RESAMPLES = 300  # enough to exercise the bootstrap; the study uses 10,000


# What a run records of the training code it ran (metrics.json: path -> md5).
TRAINING_CODE = {"repro/train.py": "0" * 32, "notebooks/train.ipynb": "f" * 32}


def write_run(
    runs_dir: Path,
    dataset: str,
    model: str,
    seed: int,
    dice: float,
    pruned: bool = False,
    best_val: float | None = None,
    device: str = "cpu",
    pruned_iou: dict[str, float] | None = None,
) -> None:
    """Write metrics.json, per_image.csv and history.csv of one run, as the training stage does (``pruned``: an
    L1 evaluation equal to the test scores; ``pruned_iou``: the test IoU at each named pruned depth, in order of
    cost)."""
    noise_shift = list(KVASIR_DICE).index(model) if model in KVASIR_DICE else len(model)
    image_dice = dice + IMAGE_OFFSETS + np.roll(IMAGE_NOISE, noise_shift)
    image_iou = image_dice / (2 - image_dice)
    images = pd.DataFrame(
        {
            "id": [f"case{k:02d}" for k in range(len(IMAGE_OFFSETS))],
            "dice": image_dice,
            "iou": image_iou,
            "miou_bg": (image_iou + 0.98) / 2,
            "dice_polyp": image_dice,
            "iou_polyp": image_iou,
        }
    )
    test = {
        "dice": images["dice"].mean(),
        "iou": images["iou"].mean(),
        "miou_bg": images["miou_bg"].mean(),
        "dice_pooled": images["dice"].mean() + 0.01,
        "iou_pooled": images["iou"].mean() + 0.01,
        "per_class": {"polyp": {"dice": images["dice"].mean(), "iou": images["iou"].mean()}},
    }
    metrics = {
        "dataset": dataset,
        "model": model,
        "arch": model,
        "options": {},
        "seed": seed,
        "scale": "cpu",
        "device": device,
        "class_names": ["background", "polyp"],
        "test": test,
        "val": test,
        "best_epoch": 3,
        "epochs": 5,
        "params": PARAMS.get(model, 2_000_000),
        "flops": 1.5e9,
        "image_size": 64,
        "train_seconds": 10.0,
        "images_per_second": 50.0,
        "versions": {"torch": "2.14.1"},
        "git_commit": "abc123",
        "code_files": TRAINING_CODE,
    }
    if pruned:
        metrics["test_pruned"] = {"L1": {key: value for key, value in test.items() if key != "per_class"}}
    if pruned_iou:  # the k-th depth named costs k GFLOPs
        metrics["test_pruned"] = {
            level: {"dice": 2 * iou / (1 + iou), "iou": iou, "flops": 1e9 * k}
            for k, (level, iou) in enumerate(pruned_iou.items(), start=1)
        }
    run_dir = runs_dir / dataset / model / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    images.to_csv(run_dir / "per_image.csv", index=False)
    best = dice if best_val is None else best_val
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.6, 0.5], "val_dice": [0.0, best / 2, best]})
    history.to_csv(run_dir / "history.csv", index=False)


def write_study(runs_dir: Path) -> None:
    """kvasir-seg: 5 seeds of every variant in KVASIR_DICE (U-Net seed 4 on a GPU); isic2018: U-Net (3 seeds),
    UNet++ (seed 0 only)."""
    for model, seed_dice in KVASIR_DICE.items():
        for seed, dice in enumerate(seed_dice):
            device = "cuda:0" if (model, seed) == ("unet", 4) else "cpu"
            write_run(runs_dir, "kvasir-seg", model, seed, dice, pruned=model == "unetpp", device=device)
    for seed in range(3):
        write_run(runs_dir, "isic2018", "unet", seed, 0.85 + SEED_EFFECTS[seed])
    write_run(runs_dir, "isic2018", "unetpp", 0, 0.86)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("results") / "runs"
    write_study(runs_dir)
    return load_runs(runs_dir)


@pytest.fixture(scope="module")
def claims_table(runs):
    return evaluation.evaluate_claims(runs, alpha=0.05, tost_margin=0.02, n_resamples=N_RESAMPLES)


def row_of(claims_table, dataset, better, baseline):
    row = claims_table[
        (claims_table["dataset"] == dataset)
        & (claims_table["better"] == better)
        & (claims_table["baseline"] == baseline)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_load_runs_is_tidy(runs):
    per_seed = runs.per_seed
    assert len(per_seed) == 5 * len(KVASIR_DICE) + 4
    assert list(per_seed.columns[:3]) == ["dataset", "model", "seed"]
    assert {"dice", "iou", "miou_bg", "dice_polyp", "pruned_L1_dice", "device", "best_val_dice"} <= set(per_seed)
    unet = per_seed[(per_seed["dataset"] == "kvasir-seg") & (per_seed["model"] == "unet")]
    np.testing.assert_allclose(unet["dice"], UNET)
    assert len(runs.per_image) == len(per_seed) * len(IMAGE_OFFSETS)


def test_load_runs_rejects_misplaced_and_missing_runs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nothing")
    write_run(tmp_path, "kvasir-seg", "unet", 0, 0.8)
    (tmp_path / "kvasir-seg" / "unet" / "seed0").rename(tmp_path / "kvasir-seg" / "unet" / "seed1")
    with pytest.raises(ValueError, match="does not match its folder"):
        load_runs(tmp_path)


def test_hd95_stands_beside_dice_where_volume_runs_recorded_it():
    per_seed = pd.DataFrame(
        {
            "dataset": ["msd-task04-hippocampus"] * 2 + ["ph2-dermoscopy"] * 2,
            "model": ["unet3d"] * 2 + ["unet"] * 2,
            "seed": [0, 1, 0, 1],
            "dice": [0.8, 0.9, 0.9, 0.92],
            "iou": [0.7, 0.8, 0.85, 0.86],
            "miou_bg": [0.8, 0.9, 0.9, 0.91],
            "hd95": [2.0, 4.0, np.nan, np.nan],
            "params": [10, 10, 5, 5],
            "flops": [1e9, 1e9, 2e9, 2e9],
        }
    )
    table = tables.results_table(per_seed).set_index("dataset")
    assert table.loc["msd-task04-hippocampus", "hd95_mean"] == 3.0
    assert table.loc["msd-task04-hippocampus", "hd95_sd"] == pytest.approx(math.sqrt(2))
    shown = tables.format_results_table(table.reset_index()).set_index("dataset")
    assert shown.loc["msd-task04-hippocampus", "HD95 (voxels)"] == "3.000 ± 1.414"
    assert shown.loc["ph2-dermoscopy", "HD95 (voxels)"] == ""  # images: no distance recorded
    # A study of images alone keeps its columns as they were.
    images = tables.results_table(per_seed[per_seed["dataset"] == "ph2-dermoscopy"].drop(columns="hd95"))
    assert not any(column.startswith("hd95") for column in images.columns)
    no_distance = tables.results_table(per_seed[per_seed["dataset"] == "ph2-dermoscopy"])
    assert not any(column.startswith("hd95") for column in no_distance.columns)


def test_results_table(runs):
    table = tables.results_table(runs.per_seed)
    kvasir_unet = table[(table["dataset"] == "kvasir-seg") & (table["model"] == "unet")].iloc[0]
    assert kvasir_unet["n_seeds"] == 5
    assert kvasir_unet["dice_mean"] == pytest.approx(UNET.mean())
    assert kvasir_unet["dice_sd"] == pytest.approx(UNET.std(ddof=1))
    assert kvasir_unet["params"] == 7_760_000 and kvasir_unet["gflops"] == pytest.approx(1.5)
    isic_unetpp = table[(table["dataset"] == "isic2018") & (table["model"] == "unetpp")].iloc[0]
    assert isic_unetpp["n_seeds"] == 1 and math.isnan(isic_unetpp["dice_sd"])


def test_parameters_print_at_three_significant_figures(runs):
    assert [tables.significant_figures(v) for v in (0.123689, 1.944, 3.499, 2.0991, 123.4, 0.0)] == [
        "0.124",
        "1.94",
        "3.50",
        "2.10",
        "123",
        "0",
    ]
    shown = tables.format_results_table(tables.results_table(runs.per_seed)).set_index(["dataset", "model"])
    assert shown.loc[("kvasir-seg", "tinyunet"), "params (M)"] == "0.480"
    assert shown.loc[("kvasir-seg", "unet"), "params (M)"] == "7.76"
    assert shown.loc[("kvasir-seg", "unet"), "GFLOPs"] == "1.50"


def test_write_table_csv_markdown_latex(runs, tmp_path):
    table = tables.results_table(runs.per_seed)
    display = tables.format_results_table(table)
    paths = tables.write_table(table, tmp_path / "tables" / "results", display=display)
    assert [path.suffix for path in paths] == [".csv", ".md", ".tex"]
    assert len(pd.read_csv(paths[0])) == len(table)
    markdown = paths[1].read_text()
    assert markdown.startswith("| dataset | model | seeds | Dice |") and "±" in markdown
    assert "\\begin{tabular}" in paths[2].read_text()


def test_markdown_table_formats_cells():
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [0.123456, np.nan], "n": [1, 2]})
    assert tables.markdown_table(df, float_digits=2) == (
        "| name | x | n |\n| :--- | ---: | ---: |\n| a\\|b | 0.12 | 1 |\n| c |  | 2 |\n"
    )


def test_p_values_print_below_the_last_decimal_as_an_inequality(claims_table, tmp_path):
    assert [tables.format_p(p) for p in (3e-17, 0.0, 0.0001, 0.00004999, 0.12345, np.nan)] == [
        "< 0.0001",
        "< 0.0001",
        "0.0001",
        "< 0.0001",
        "0.1235",
        "",
    ]
    row = row_of(claims_table, "kvasir-seg", "unetpp", "unet")
    assert row["p_direction"] < 1e-4  # the synthetic gain is far beyond the noise
    shown = tables.format_claims_table(claims_table)
    paths = tables.write_table(claims_table, tmp_path / "claims", display=shown)
    markdown, latex = paths[1].read_text(), paths[2].read_text()
    p_columns = [column for column in shown.columns if column.startswith("p ") or column.endswith(" p")]
    p_columns.append("image p (given the models)")
    assert len(p_columns) == 6 and not shown[p_columns].isin(["0.0000"]).any().any()
    assert (shown["p direction"] == "< 0.0001").any() and "< 0.0001" in markdown
    assert r"\textless{} 0.0001" in latex and "<" not in latex


def test_claims_table_covers_every_comparison_and_dataset(claims_table):
    # The study has two datasets; a claim restricted to some datasets is tested on those only.
    n_rows = sum(len(claim.comparisons) * (2 if claim.datasets is None else len(claim.datasets)) for claim in CLAIMS)
    assert len(claims_table) == n_rows
    assert list(claims_table.columns) == evaluation.CLAIM_COLUMNS
    assert set(claims_table["verdict"]) <= set(verdicts.LABELS)


def test_a_claim_restricted_to_datasets_has_rows_there_only(claims_table):
    restricted = {claim.id: claim.datasets for claim in CLAIMS if claim.datasets is not None}
    planar = ("dsb2018-nuclei-96", "kvasir-seg", "ph2-dermoscopy")
    volumes = ("msd-task04-hippocampus",)
    assert restricted == {
        "C1s": ("dsb2018-nuclei-96",),
        "C2s": ("dsb2018-nuclei-96",),
        "C4c": ("covid19-ct-medseg-infnet",),  # TinyU-Net's N-ablation ran on COVID-19 CT
        **{claim_id: volumes for claim_id in ("C10", "C13", "C14")},
        **{claim_id: planar for claim_id in ("C11", "C12")},
        "C15": ("msd-task04-hippocampus", "la2018-atrium-lgemri"),  # 3D U²-Net's universal model's two domains
    }
    for claim_id, datasets in restricted.items():
        rows = claims_table[claims_table["claim_id"] == claim_id]
        # Shown on its datasets only, as not run: none of its variants has runs in the constructed study (whose
        # datasets are kvasir-seg and isic2018).
        comparisons = len(next(claim for claim in CLAIMS if claim.id == claim_id).comparisons)
        assert list(rows["dataset"]) == [d for d in datasets for _ in range(comparisons)]
        assert (rows["verdict"] == verdicts.NOT_RUN).all()
    per_claim = evaluation.claim_verdicts(claims_table)
    assert set(per_claim.loc[per_claim["claim_id"] == "C1s", "dataset"]) == {"dsb2018-nuclei-96"}
    assert set(per_claim.loc[per_claim["claim_id"] == "C1", "dataset"]) == {"kvasir-seg", "isic2018"}


def test_every_superiority_label_on_constructed_runs(claims_table):
    expected = {
        ("unetpp", "unet"): verdicts.REPRODUCED,
        ("unet_cmrf", "unet_w1"): verdicts.REPRODUCED_SMALLER,
        ("unetpp", "wide_unet"): verdicts.REVERSED,
        ("tinyunet", "unet_w1"): verdicts.SMALLER,
        ("tinyunet", "tinyunet_plain"): verdicts.UNDERPOWERED,
        ("unetv2", "unetv2_nosdi"): verdicts.INCONCLUSIVE,
    }
    got = {pair: row_of(claims_table, "kvasir-seg", *pair)["verdict"] for pair in expected}
    assert got == expected
    one_matched_seed = row_of(claims_table, "isic2018", "unetpp", "unet")
    assert one_matched_seed["verdict"] == verdicts.INCONCLUSIVE and one_matched_seed["n_seeds"] == 1
    assert pd.isna(one_matched_seed["family_size"]) and pd.isna(one_matched_seed["p_direction_holm"])
    assert row_of(claims_table, "isic2018", "unetpp", "wide_unet")["verdict"] == verdicts.NOT_RUN


def test_holm_runs_over_each_claims_direction_and_magnitude_tests_together(claims_table):
    # C1: kvasir-seg is its only row with >= 2 matched seeds: m = 2 (direction and magnitude).
    c1 = row_of(claims_table, "kvasir-seg", "unetpp", "unet")
    assert c1["family_size"] == 2 and c1["p_holm"] == c1["p_direction_holm"]
    expected = holm_bonferroni([c1["p_direction"], c1["p_magnitude"]])
    assert [c1["p_direction_holm"], c1["p_magnitude_holm"]] == pytest.approx(expected.tolist(), rel=1e-12)
    # C4a has no claimed number: its family is the direction test alone, so Holm changes nothing.
    c4a = row_of(claims_table, "kvasir-seg", "tinyunet", "tinyunet_plain")
    assert c4a["family_size"] == 1 and c4a["p_direction_holm"] == c4a["p_direction"]
    assert pd.isna(c4a["p_magnitude"]) and pd.isna(c4a["p_magnitude_holm"])
    # The magnitude test is one-sided against the claim: a gain beyond it cannot be "ruled out".
    assert c1["mean_diff"] > c1["claimed_difference"] and c1["p_magnitude"] > 0.5


def test_adjusted_interval_and_power_use_the_family_level(claims_table):
    row = row_of(claims_table, "kvasir-seg", "tinyunet", "unet_w1")
    m = row["family_size"]
    assert m == 2
    assert row["ci_adj_low"] < row["ci_low"] < row["ci_high"] < row["ci_adj_high"]
    mdd = minimal_detectable_difference(row["sd_diff"], 5, 0.05 / m)
    assert row["mdd_adj"] == pytest.approx(mdd, rel=1e-9) and row["mdd_adj"] > row["mdd"]
    assert row["seeds_needed_adj"] == str(seeds_needed(row["sd_diff"], 0.028, 0.05 / m))
    no_d = row_of(claims_table, "kvasir-seg", "tinyunet", "tinyunet_plain")
    assert no_d["seeds_needed_adj"] == str(seeds_needed(no_d["sd_diff"], 0.01, 0.05))
    assert no_d["mdd_adj"] > 0.01  # why it is underpowered


def test_equivalence_family_is_holm_adjusted_tost(claims_table):
    c6 = claims_table[(claims_table["claim_id"] == "C6") & (claims_table["dataset"] == "kvasir-seg")]
    assert (c6["family_size"] == 3).all() and c6["p_magnitude"].isna().all()
    np.testing.assert_array_equal(c6["p_direction"], c6["tost_p"])
    np.testing.assert_allclose(c6["p_direction_holm"], holm_bonferroni(c6["tost_p"].to_numpy()), rtol=1e-12)
    labels = dict(zip(c6["better"], c6["verdict"], strict=True))
    assert labels == {
        "light_unet": verdicts.EQUIVALENT,
        "lighter_unet_128": verdicts.INCONCLUSIVE,
        "lighter_unet_1": verdicts.NOT_EQUIVALENT,
    }
    worse = row_of(claims_table, "kvasir-seg", "lighter_unet_1", "unet_bilinear")
    assert worse["tost_ci_high"] < -0.02 and pd.isna(worse["seeds_needed_adj"])


def test_claim_verdicts_take_the_weakest_row(claims_table):
    per_claim = evaluation.claim_verdicts(claims_table).set_index(["claim_id", "dataset"])["verdict"]
    assert per_claim[("C1", "kvasir-seg")] == verdicts.REPRODUCED
    assert per_claim[("C6", "kvasir-seg")] == verdicts.NOT_EQUIVALENT  # lighter_unet_1
    assert ("C4c", "kvasir-seg") not in per_claim.index  # restricted to CT, where the synthetic study has no runs
    assert per_claim[("C1", "isic2018")] == verdicts.INCONCLUSIVE


def test_secondary_statistics(claims_table):
    row = row_of(claims_table, "kvasir-seg", "unetpp", "unet")
    assert row["n_seeds"] == 5 and row["n_images"] == len(IMAGE_OFFSETS)
    assert row["wilcoxon_p"] == pytest.approx(0.0625)  # all 5 differences positive: the floor
    assert row["seeds_needed"] == str(seeds_needed(row["sd_diff"], 0.0186))  # the paper's +1.86 IoU, at alpha
    assert 0 < row["mdd"] < row["mean_diff"]
    assert row["image_p"] < 0.05 and row["image_mean_diff"] > 0
    assert row["boot_ci_low"] < row["mean_diff"] < row["boot_ci_high"]
    assert row["claimed_on"] == "cell nuclei (Data Science Bowl 2018)"
    assert row["devices"] == "cpu; cuda:0"  # U-Net seed 4 ran on a GPU
    assert row_of(claims_table, "kvasir-seg", "unetv2", "unetv2_nosdi")["devices"] == "cpu"


def test_bootstrap_columns_are_identical_on_rerun(runs, claims_table):
    again = evaluation.evaluate_claims(runs, n_resamples=N_RESAMPLES)
    pd.testing.assert_frame_equal(again, claims_table)
    other_seed = evaluation.evaluate_claims(runs, n_resamples=N_RESAMPLES, bootstrap_seed=1)
    assert not np.allclose(other_seed["boot_ci_low"].dropna(), claims_table["boot_ci_low"].dropna())


def test_c5a_has_no_number_and_says_why():
    c5a = next(claim for claim in CLAIMS if claim.id == "C5a")
    (comparison,) = c5a.comparisons
    assert comparison.claimed_difference is None and comparison.claimed_on is None
    assert "not an SDI ablation" in comparison.source


def write_failed_run_study(runs_dir: Path) -> None:
    """C5a on one dataset: U-Net v2 gains 0.02 Dice over its SDI-less variant on seeds 0-3; its seed 4 never
    learned (validation Dice 0.05 against about 0.8 for the others), and its test Dice collapsed."""
    gains = 0.02 + np.array([0.001, -0.001, 0.0005, -0.0005, 0.0])
    for seed in range(5):
        write_run(runs_dir, "ph2", "unetv2_nosdi", seed, UNET[seed])
        failed = seed == 4
        dice = 0.3 if failed else UNET[seed] + gains[seed]
        write_run(runs_dir, "ph2", "unetv2", seed, dice, best_val=0.05 if failed else 0.8)


def test_failed_runs_are_found_from_validation_history_and_reported_beside(tmp_path):
    write_failed_run_study(tmp_path)
    runs = load_runs(tmp_path)
    failed = failed_runs(runs.per_seed)
    assert failed[["dataset", "model", "seed"]].values.tolist() == [["ph2", "unetv2", 4]]
    assert failed["others_median"].item() == pytest.approx(0.8) and failed["threshold"].item() == pytest.approx(0.4)
    table = evaluation.evaluate_claims(runs, n_resamples=N_RESAMPLES)
    row = row_of(table, "ph2", "unetv2", "unetv2_nosdi")
    assert row["n_failed"] == 1 and row["n_seeds"] == 5  # failed runs stay in the primary analysis
    assert row["verdict"] == verdicts.UNDERPOWERED
    assert row["verdict_without_failed"] == verdicts.REPRODUCED
    per_claim = evaluation.claim_verdicts(table).set_index(["claim_id", "dataset"])
    assert per_claim.loc[("C5a", "ph2"), "n_failed"] == 1
    assert per_claim.loc[("C5a", "ph2"), "verdict_without_failed"] == verdicts.REPRODUCED


def test_a_run_is_not_failed_for_a_poor_test_score_or_alone_in_its_cell(runs):
    # Every synthetic kvasir run has a best validation Dice equal to its test Dice, all within 0.2 of each other.
    assert failed_runs(runs.per_seed).empty
    single = runs.per_seed[(runs.per_seed["dataset"] == "isic2018") & (runs.per_seed["model"] == "unetpp")]
    assert failed_runs(single.assign(best_val_dice=0.0)).empty


def test_stats_json_round_trips_every_value_exactly(runs, claims_table, tmp_path):
    table = tables.results_table(runs.per_seed)
    failed = failed_runs(runs.per_seed)
    summary = report.stats_summary(table, claims_table, failed, n_resamples=N_RESAMPLES)
    path = report.write_stats_json(summary, tmp_path / "stats.json")
    loaded = json.loads(path.read_text())
    assert loaded["settings"] == {"alpha": 0.05, "tost_margin": 0.02, "power": 0.8, "bootstrap_resamples": 300}
    assert len(loaded["comparisons"]) == len(claims_table)
    compared = 0
    for record, (_, row) in zip(loaded["comparisons"], claims_table.iterrows(), strict=True):
        for column, value in row.items():
            if pd.isna(value):
                assert record[column] is None, column
            else:
                assert record[column] == value, column  # bit for bit, not approximately
                compared += isinstance(record[column], float)
    assert compared > 100
    assert sum(loaded["verdict_counts"].values()) == len(loaded["claims"])
    assert loaded["labels"][verdicts.REVERSED] == verdicts.MEANINGS[verdicts.REVERSED]


def test_training_code_version_names_the_code_files_not_their_order():
    version = training_code_version(TRAINING_CODE)
    assert len(version) == 12 and version == training_code_version(dict(reversed(TRAINING_CODE.items())))
    assert training_code_version(TRAINING_CODE | {"repro/train.py": "1" * 32}) != version
    assert training_code_version(TRAINING_CODE | {"repro/losses.py": "0" * 32}) != version
    assert training_code_version(None) is None and training_code_version({}) is None


def test_notebook_prose_follows_the_tables(runs, claims_table):
    overview = report.study_overview(runs)
    assert f"**{len(runs.per_seed)} runs**" in overview and "`cuda:0` (1)" in overview and "`abc123` (" in overview
    assert f"`{training_code_version(TRAINING_CODE)}` ({len(runs.per_seed)})" in overview
    example = report.worked_example(claims_table, runs, alpha=0.05, claim_id="C1")
    assert "m = 2 tests" in example and f"**{verdicts.REPRODUCED}**" in example
    assert report.non_inferiority_example(claims_table, runs, alpha=0.05, margin=0.02) == (
        "C9 has no row with at least 2 matched seeds in this study: no worked example.\n"
    )
    conclusions = report.conclusions(claims_table)
    per_claim = evaluation.claim_verdicts(claims_table)
    for row in per_claim[per_claim["verdict"] != verdicts.NOT_RUN].itertuples():
        assert f"on `{row.dataset}` **{row.verdict}**" in conclusions
    assert "- **C4c** (N = 8 cascaded depth-wise convolutions in CMRF is best): not run" in conclusions


def write_sensitivity_study(runs_dir: Path) -> None:
    """dsb2018-nuclei-96: the default study's U-Net and UNet++ and the 2018-configured ones, 5 seeds each."""
    for seed in range(5):
        write_run(runs_dir, "dsb2018-nuclei-96", "unet", seed, UNET[seed])
        write_run(runs_dir, "dsb2018-nuclei-96", "unetpp", seed, UNET[seed] + 0.004 + TINY[seed] * 20)
        write_run(runs_dir, "dsb2018-nuclei-96", "unet_2018", seed, UNET[seed] - 0.01)
        write_run(runs_dir, "dsb2018-nuclei-96", "unetpp_2018", seed, UNET[seed] + 0.03 + TINY[seed] * 20)


def test_a_sensitivity_claim_has_its_own_family_beside_the_primary_one(tmp_path):
    write_sensitivity_study(tmp_path)
    table = evaluation.evaluate_claims(load_runs(tmp_path), n_resamples=0)
    c1 = row_of(table, "dsb2018-nuclei-96", "unetpp", "unet")
    c1s = row_of(table, "dsb2018-nuclei-96", "unetpp_2018", "unet_2018")
    assert c1s["claim_id"] == "C1s" and c1s["sensitivity_of"] == "C1" and pd.isna(c1["sensitivity_of"])
    # Each family holds its own claim's direction and magnitude tests only: m = 2 apiece, Holm within each.
    for row in (c1, c1s):
        assert row["family_size"] == 2
        expected = holm_bonferroni([row["p_direction"], row["p_magnitude"]])
        assert [row["p_direction_holm"], row["p_magnitude_holm"]] == pytest.approx(expected.tolist(), rel=1e-12)
    assert c1s["verdict"] == verdicts.REPRODUCED and c1s["mean_diff"] > c1["mean_diff"]
    assert row_of(table, "dsb2018-nuclei-96", "unetpp_2018", "wide_unet_2018")["verdict"] == verdicts.NOT_RUN
    conclusions = report.conclusions(table)
    assert "A sensitivity analysis of C1 on `dsb2018-nuclei-96`" in conclusions
    c1_line = next(line for line in conclusions.splitlines() if line.startswith("- **C1** "))
    assert "Sensitivity analysis: **C1s**." in c1_line


# Per dataset, the test IoU of UNet++ with deep supervision pruned to L3 minus the same runs at L4, built so that
# every non-inferiority label occurs (margin 0.02; a family of 4 rows).
PRUNING_LOSS = {
    "a-set": -0.005 + np.array([0.001, -0.001, 0.0005, -0.0005, 0.0]),  # a loss well inside the margin
    "b-set": -0.06 + np.array([0.001, -0.001, 0.0005, -0.0005, 0.0]),  # far beyond it
    "c-set": np.array([0.03, -0.04, 0.02, -0.01, -0.005]),  # too noisy to tell
    "d-set": -0.02 + np.array([0.002, -0.002, 0.001, -0.001, 0.0]),  # exactly at the margin, precisely
}


def write_pruning_study(runs_dir: Path) -> None:
    for dataset, losses in PRUNING_LOSS.items():
        for seed, loss in enumerate(losses):
            full = 0.7 + SEED_EFFECTS[seed]
            write_run(runs_dir, dataset, "unetpp_ds", seed, 0.8, pruned_iou={"L3": full + loss, "L4": full})
            write_run(runs_dir, dataset, "unetpp", seed, 0.8)


def test_every_non_inferiority_label_on_constructed_runs(tmp_path):
    write_pruning_study(tmp_path)
    runs = load_runs(tmp_path)
    table = evaluation.evaluate_claims(runs, n_resamples=N_RESAMPLES)
    c9 = table[table["claim_id"] == "C9"].set_index("dataset")
    assert dict(c9["verdict"]) == {
        "a-set": verdicts.NON_INFERIOR,
        "b-set": verdicts.INFERIOR,
        "c-set": verdicts.UNDERPOWERED,
        "d-set": verdicts.INCONCLUSIVE,
    }
    assert (c9["family_size"] == 4).all() and c9["p_magnitude"].isna().all()
    for dataset, losses in PRUNING_LOSS.items():
        row = c9.loc[dataset]
        assert row["mean_diff"] == pytest.approx(losses.mean(), abs=1e-12)
        # p_direction is the one-sided test of H0 mean d <= -margin, Holm-adjusted over the 4 rows.
        t = (losses.mean() + 0.02) / (losses.std(ddof=1) / np.sqrt(5))
        assert row["p_direction"] == pytest.approx(stats.t.sf(t, df=4), rel=1e-9)
        # The family's interval is (1 - 2 alpha/m): its upper end is the one-sided (1 - alpha/m) bound.
        upper = losses.mean() + stats.t.ppf(1 - 0.05 / 4, df=4) * losses.std(ddof=1) / np.sqrt(5)
        assert row["ci_adj_high"] == pytest.approx(upper, rel=1e-9)
    np.testing.assert_allclose(c9["p_direction_holm"], holm_bonferroni(c9["p_direction"].to_numpy()), rtol=1e-12)
    assert c9.loc["b-set", "ci_adj_high"] < -0.02 < c9.loc["d-set", "ci_adj_high"]
    # No per-image scores exist for pruned depths, so neither the per-image test nor the bootstrap is computed.
    assert c9[["n_images", "image_p", "boot_ci_low", "boot_ci_high"]].isna().all().all()
    assert (c9["better_level"] == "L3").all() and (c9["baseline_level"] == "L4").all()
    assert (c9["n_failed"] == 0).all()
    shown = tables.format_claims_table(table)
    assert set(shown.loc[shown["claim"] == "C9", "comparison"]) == {"unetpp_ds@L3 - unetpp_ds@L4"}
    # C8 compares the same runs' own (averaged-heads) scores with UNet++ without deep supervision.
    assert row_of(table, "a-set", "unetpp_ds", "unetpp")["better_level"] is None or pd.isna(
        row_of(table, "a-set", "unetpp_ds", "unetpp")["better_level"]
    )
    per_claim = evaluation.claim_verdicts(table).set_index(["claim_id", "dataset"])["verdict"]
    assert per_claim[("C9", "b-set")] == verdicts.INFERIOR
    example = report.non_inferiority_example(table, runs, alpha=0.05, margin=0.02)
    losses = PRUNING_LOSS["a-set"]
    t = (losses.mean() + 0.02) / (losses.std(ddof=1) / np.sqrt(5))
    assert example.startswith("**C9 on `a-set`** (unetpp_ds@L3 - unetpp_ds@L4, iou)")
    assert f"t = {t:.3f} on 4 degrees of freedom" in example and "m = 4 tests" in example
    assert f"**{verdicts.NON_INFERIOR}**" in example
    fig = figures.plot_forest(table, margin=0.02)
    assert "C9 (iou)\nunetpp_ds@L3 - unetpp_ds@L4" in [ax.get_title() for ax in fig.axes]
    plt.close(fig)


def test_a_run_without_the_pruned_scores_a_comparison_needs_is_named(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "a-set", "unetpp_ds", seed, 0.8, pruned_iou={"L4": 0.7} if seed else {"L3": 0.7, "L4": 0.7})
    with pytest.raises(ValueError, match=r"runs of a-set/unetpp_ds: seeds \[1\] have no test_pruned\[L3\]"):
        evaluation.evaluate_claims(load_runs(tmp_path), n_resamples=0)


def test_design_notes_are_shown_in_the_claims_table_and_the_conclusions(claims_table):
    designs = {(c.better, c.baseline): c.design for claim in CLAIMS for c in claim.comparisons if c.design}
    assert {("tinyunet", "unet_w1"), ("tinyunet", "tinyunet_plain"), ("unet_cmrf", "unet_w1")} <= set(designs)
    assert "SegNet and CMUNeXt" in designs[("unet_cmrf", "unet_w1")]
    assert "7.76M" in designs[("tinyunet", "unet_w1")] and "24.89M" in designs[("tinyunet", "unet_w1")]
    shown = tables.format_claims_table(claims_table)
    for (better, baseline), design in designs.items():
        assert set(shown.loc[shown["comparison"] == f"{better} - {baseline}", "design"]) == {design}
    assert set(shown.loc[shown["claim"] == "C1", "design"]) == {""}
    conclusions = report.conclusions(claims_table)
    # C4b is not run in the synthetic study: its design is stated all the same.
    c4b = next(line for line in conclusions.splitlines() if line.startswith("- **C4b**"))
    assert f"Design of unet_cmrf - unet_w1: {designs[('unet_cmrf', 'unet_w1')]}." in c4b
    c3 = next(line for line in conclusions.splitlines() if line.startswith("- **C3**"))
    assert "on `kvasir-seg` **" in c3 and f"Design of tinyunet - unet_w1: {designs[('tinyunet', 'unet_w1')]}." in c3


def test_pruning_accuracy_table_pairs_each_depth_with_the_same_runs_at_full_depth(tmp_path):
    """Each seed's score at a depth against the same seed's at full depth (the deepest L level); variants without
    pruned depths (U-Net v2 scores its last head alone, `final`) and depths a variant was not scored at stay out."""
    l1, l4 = [0.60, 0.66, 0.57], [0.70, 0.72, 0.71]
    for seed in range(3):
        depths = {"L1": l1[seed], "L4": l4[seed], "average": l4[seed] + 0.01}
        write_run(tmp_path, "kvasir-seg", "unetpp_ds", seed, 0.8, pruned_iou=depths)
        write_run(tmp_path, "kvasir-seg", "unetv2", seed, 0.8, pruned_iou={"final": 0.7})
    write_run(tmp_path, "kvasir-seg", "unet", 0, 0.8)
    table = tables.pruning_accuracy_table(load_runs(tmp_path).per_seed)
    assert list(zip(table["model"], table["depth"], strict=True)) == [
        ("unetpp_ds", "L1"),
        ("unetpp_ds", "L4"),
        ("unetpp_ds", "average"),
    ]
    by_depth = table.set_index("depth")
    assert by_depth.loc["L1", "n_seeds"] == 3
    assert by_depth.loc["L1", "iou_mean"] == pytest.approx(np.mean(l1))
    assert by_depth.loc["L1", "iou_sd"] == pytest.approx(np.std(l1, ddof=1))
    assert by_depth.loc["L1", "iou_vs_full"] == pytest.approx(np.mean(np.subtract(l1, l4)))
    assert by_depth.loc["average", "iou_vs_full"] == pytest.approx(0.01)
    assert list(by_depth["gflops"]) == [1.0, 2.0, 3.0] and by_depth.loc["L1", "gflops_vs_full"] == 0.5
    shown = tables.format_pruning_accuracy_table(table).iloc[0]
    assert (shown["IoU vs full depth"], shown["GFLOPs vs full depth"]) == ("-0.100", "0.500")
    unpruned = tables.pruning_accuracy_table(load_runs(tmp_path).per_seed.query("model != 'unetpp_ds'"))
    assert unpruned.empty and list(unpruned.columns) == list(table.columns)


def test_committed_runs_give_the_committed_claims_table():
    """The study's own runs through the code: every row of the committed claims.csv comes back (bootstrap
    columns aside, which need 10,000 resamples), every claim has its rows there, and exactly the rows with a
    variant that has no committed runs on the dataset are `not run`."""
    study = Path(__file__).resolve().parents[1] / "results" / load_params()["scale"]
    if not (study / "tables" / "claims.csv").exists():
        pytest.skip(f"{study} holds no study of the current training code yet (README, Results)")
    committed = pd.read_csv(study / "tables" / "claims.csv", dtype={"seeds_needed": str, "seeds_needed_adj": str})
    runs = load_runs(study / "runs")
    table = evaluation.evaluate_claims(runs, n_resamples=0)
    # Columns added later come last (q_direction_bh): a claims.csv aggregated before one of them lacks it until the
    # aggregate stage is re-run, and every column it has must still come back, in place.
    assert list(table.columns)[: len(committed.columns)] == list(committed.columns)
    assert set(table.columns) - set(committed.columns) <= {"q_direction_bh"}
    table = table[committed.columns]
    assert list(dict.fromkeys(committed["claim_id"])) == [claim.id for claim in CLAIMS]
    trained = set(runs.per_seed[["dataset", "model"]].itertuples(index=False, name=None))
    has_runs = [{(row.dataset, row.better), (row.dataset, row.baseline)} <= trained for row in committed.itertuples()]
    assert list(committed["verdict"] != verdicts.NOT_RUN) == has_runs
    boot = ["boot_ci_low", "boot_ci_high"]
    expected = committed.drop(columns=boot)
    got = table.drop(columns=boot).astype({"n_seeds": float, "n_images": float, "family_size": float})
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-12)


def test_verdict_rule_states_the_thresholds():
    rule = verdicts.verdict_rule(alpha=0.01, tost_margin=0.03)
    assert "p_direction_holm < 0.01" in rule and "+/-0.03" in rule and "98% CI" in rule


def test_figures_are_written(runs, claims_table, tmp_path):
    """Each figure has a panel per dataset (the forest plot: per comparison) with its data drawn, and the PNG written
    is that figure: its tight box at 150 dpi, far from blank (data in colour, not only black text on white)."""
    table = tables.results_table(runs.per_seed)
    drawn = {
        "seed_dice.png": (figures.plot_seed_scores(runs.per_seed), ["isic2018", "kvasir-seg"]),
        "forest.png": (figures.plot_forest(claims_table, margin=0.02), _forest_titles(claims_table)),
        "efficiency.png": (figures.plot_efficiency(table), ["isic2018", "kvasir-seg"]),
    }
    for name, (fig, datasets) in drawn.items():
        assert [ax.get_title() for ax in fig.axes] == datasets, name
        assert all(ax.lines or ax.collections for ax in fig.axes), f"{name}: a panel without data"
        fig.set_dpi(150)
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
        path = figures.save_figure(fig, tmp_path / "figures" / name)
        image = plt.imread(path)
        assert image.shape[:2] == pytest.approx((box.height * 150, box.width * 150), abs=2), name
        background = image[0, 0]
        assert (np.abs(image - background).sum(axis=-1) > 0.1).mean() > 0.02, f"{name} is almost blank"
        colours = image[..., :3].reshape(-1, 3)
        assert (colours.max(axis=1) - colours.min(axis=1) > 0.2).any(), f"{name} has no colour"
        plt.close(fig)


def _forest_titles(claims_table: pd.DataFrame) -> list[str]:
    """The forest plot's panel titles: one per comparison that ran, in the claims table's order."""
    tested = claims_table[claims_table["mean_diff"].notna()]
    names = tables.comparison_names(tested)
    titles = tested["claim_id"] + " (" + tested["metric"] + ")\n" + names
    return list(dict.fromkeys(titles))


def _tested_rows(claims_table, claim_id, better, baseline):
    """One comparison's rows of the claims table that ran."""
    return claims_table[
        (claims_table["claim_id"] == claim_id)
        & (claims_table["better"] == better)
        & (claims_table["baseline"] == baseline)
        & claims_table["mean_diff"].notna()
    ]


def _forest_panel(fig, rows):
    """The forest plot's panel of the comparison of ``rows``."""
    title = f"{rows['claim_id'].iloc[0]} ({rows['metric'].iloc[0]})\n{tables.comparison_names(rows).iloc[0]}"
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_forest_colours_follow_the_labels_and_draws_both_intervals(claims_table):
    fig = figures.plot_forest(claims_table, margin=0.02)
    rows = _tested_rows(claims_table, "C1", "unetpp", "unet")
    ax = _forest_panel(fig, rows)
    widths = sorted({float(w) for c in ax.collections for w in np.atleast_1d(c.get_linewidth())})
    assert 1.0 in widths and 4.0 in widths  # thin adjusted and thick unadjusted intervals
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert set(claims_table.loc[claims_table["mean_diff"].notna(), "verdict"]) <= set(legend)
    # Datasets are the rows, the same in every panel.
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == sorted(rows["dataset"].unique())
    plt.close(fig)


def test_forest_gives_each_comparison_its_own_scale_with_zero_the_claim_and_the_margin(claims_table):
    """A large effect (U-Net against FCN's +0.35) widens its own panel only: every other panel keeps the axis its own
    rows set, so none is squeezed into a sliver. Each panel marks zero and the paper's claimed difference, an
    equivalence one the margin on both sides."""
    large = claims_table.copy()
    c1 = (large["claim_id"] == "C1") & (large["better"] == "unetpp") & large["mean_diff"].notna()
    shift = 0.35 - large.loc[c1, "mean_diff"].mean()
    large.loc[c1, ["mean_diff", "ci_low", "ci_high", "ci_adj_low", "ci_adj_high"]] += shift
    as_is, widened = (figures.plot_forest(table, margin=0.02) for table in (claims_table, large))
    limits = {ax.get_title(): ax.get_xlim() for ax in as_is.axes}
    for ax in widened.axes:
        if ax.get_title().startswith("C1 "):
            assert ax.get_xlim()[1] > 0.35 > limits[ax.get_title()][1]
        else:
            assert ax.get_xlim() == limits[ax.get_title()], ax.get_title()
    rows = _tested_rows(claims_table, "C1", "unetpp", "unet")
    ax = _forest_panel(as_is, rows)
    vertical = {line.get_xdata()[0] for line in ax.lines}
    assert {0.0, rows["claimed_difference"].iloc[0]} <= vertical
    c6 = claims_table[(claims_table["kind"] == "equivalence") & claims_table["mean_diff"].notna()].iloc[0]
    ax = _forest_panel(as_is, _tested_rows(claims_table, "C6", c6["better"], c6["baseline"]))
    assert {-0.02, 0.0, 0.02} <= {line.get_xdata()[0] for line in ax.lines}
    plt.close(as_is)
    plt.close(widened)


def test_forest_clips_a_wide_family_wise_interval_at_the_axis_and_says_so(claims_table):
    """Two seeds give a family-wise interval 25 times the paired sd wide: drawn as far as the panel's axis (which
    the unadjusted intervals set), with a triangle at the edge, so the other rows stay readable."""
    table = claims_table.copy()
    rows = _tested_rows(table, "C1", "unetpp", "unet")
    first = rows.index[rows["dataset"] == "kvasir-seg"][0]
    table.loc[first, ["ci_adj_low", "ci_adj_high"]] = [-2.5, 2.5]
    low, high = figures.forest_limits(table.loc[rows.index], [rows["claimed_difference"].iloc[0]])
    assert -1.0 <= low < min(rows["ci_low"].min(), 0)
    assert max(rows["ci_high"].max(), 0) < high <= 1
    fig = figures.plot_forest(table, margin=0.02)
    ax = _forest_panel(fig, rows)
    assert ax.get_xlim() == pytest.approx((low, high))
    drawn = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())])
    drawn = drawn[np.isfinite(drawn)]
    assert low - 1e-12 <= drawn.min() and drawn.max() <= high + 1e-12
    assert np.isclose(drawn, low).any() and np.isclose(drawn, high).any()  # the clipped bounds, at the edges
    assert "family-wise CI goes on beyond the axis" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    unclipped = figures.plot_forest(claims_table, margin=0.02)
    assert "family-wise CI goes on beyond the axis" not in [t.get_text() for t in unclipped.legends[0].get_texts()]
    plt.close(unclipped)


def _efficiency_table(dataset: str, models: list[str], dice: list[float], params: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"dataset": dataset, "model": models, "n_seeds": 5, "dice_mean": dice, "dice_sd": 0.01, "params": params}
    ).assign(gflops=1.0)


# Seven variants in a tight cluster (the PH2 panel's problem) and one far below.
_PH2 = _efficiency_table(
    "ph2",
    ["unet", "wide_unet", "unetpp", "tinyunet_plain", "unetv2", "unetv2_nosdi", "tinyunet"],
    [0.890, 0.891, 0.889, 0.892, 0.890, 0.893, 0.60],
    [1_944_000, 2_326_000, 2_266_000, 3_721_000, 1_428_000, 1_378_000, 124_000],
)
# Twenty variants, most of them near the top and the largest at the right, one far below (the DSB2018 panel's problem,
# whose names ran below the axes), beside a dataset of one variant.
_CROWDED = pd.concat(
    [
        _efficiency_table(
            "dsb",
            [f"variant_{k}_with_a_long_name" if k % 5 == 0 else f"v{k}" for k in range(19)] + ["fcn"],
            [0.90 + 0.0005 * k for k in range(18)] + [0.78, 0.63],
            [480_000 + 490_000 * k for k in range(20)],
        ),
        _efficiency_table("one", ["tinyunet"], [0.51], [481_000]),
    ]
)


def _rendered_names(fig):
    """Per axes, its box and its names' boxes, drawn by the Agg canvas."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    # Text's own extent: an Annotation's would include its leader line, which may cross other labels' rows.
    return [
        (ax.get_window_extent(renderer), [Text.get_window_extent(text, renderer) for text in ax.texts])
        for ax in fig.axes
    ]


@pytest.mark.parametrize("table", [_PH2, _CROWDED], ids=["ph2", "crowded"])
def test_efficiency_labels_never_overlap(table):
    fig = figures.plot_efficiency(table)
    for (_, boxes), (_, variants) in zip(_rendered_names(fig), table.groupby("dataset"), strict=True):
        assert len(boxes) == len(variants)
        for i, first in enumerate(boxes):
            for second in boxes[i + 1 :]:
                assert not first.overlaps(second)
    plt.close(fig)


@pytest.mark.parametrize("table", [_PH2, _CROWDED], ids=["ph2", "crowded"])
def test_efficiency_labels_lie_inside_their_axes_right_of_every_point(table):
    fig = figures.plot_efficiency(table)
    for ax, (box, names) in zip(fig.axes, _rendered_names(fig), strict=True):
        for name in names:
            assert box.x0 <= name.x0 and name.x1 <= box.x1 and box.y0 <= name.y0 and name.y1 <= box.y1, name
        rows = table[table["dataset"] == ax.get_title()]
        points = ax.transData.transform(np.column_stack([rows["params"], rows["dice_mean"]]))
        assert points[:, 0].max() < min(name.x0 for name in names)  # no point under the column of names
    plt.close(fig)


def test_seed_figure_is_byte_identical_across_runs_and_leaves_numpy_alone(runs, tmp_path):
    """DVC hashes the figures: re-running the aggregation must not change them (seaborn's jitter is random)."""
    pictures = []
    for k in range(2):
        np.random.uniform()  # noqa: NPY002 - a different global state each time
        before = np.random.get_state()  # noqa: NPY002
        fig = figures.plot_seed_scores(runs.per_seed)
        after = np.random.get_state()  # noqa: NPY002
        assert (before[1] == after[1]).all() and before[2] == after[2]
        pictures.append(figures.save_figure(fig, tmp_path / f"seed_dice{k}.png").read_bytes())
        plt.close(fig)
    assert pictures[0] == pictures[1]


def test_analysis_modules_do_not_import_torch():
    # Every module of the package, so a new one is held to the package's rule too.
    names = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "repro" / "analysis").glob("*.py"))
    modules = ", ".join(f"repro.analysis.{name}" for name in names if name != "__init__")
    code = f"import sys, {modules}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_claims_are_well_formed():
    assert len({claim.id for claim in CLAIMS}) == len(CLAIMS)
    for claim in CLAIMS:
        assert claim.kind in ("superiority", "equivalence", "non-inferiority")
        assert claim.metric in ("dice", "iou", "miou_bg") and claim.comparisons
        assert claim.sensitivity_of is None or claim.sensitivity_of in {other.id for other in CLAIMS} - {claim.id}
        for comparison in claim.comparisons:
            sides = {(comparison.better, comparison.better_level), (comparison.baseline, comparison.baseline_level)}
            assert len(sides) == 2 and comparison.source
            assert (comparison.claimed_difference is None) == (comparison.claimed_on is None)
    n8 = next(claim for claim in CLAIMS if claim.id == "C4c")
    # NCP mIoU 80.27 at N = 8 minus 79.24 / 79.58 / 79.77 / 79.56 at N = 1 / 2 / 4 / 16.
    assert [c.claimed_difference for c in n8.comparisons] == pytest.approx([0.0103, 0.0069, 0.0050, 0.0071])
    # The UNet++ papers give an ordering (C7), a direction (C8) and no margin (C9): no number is tested.
    for claim in CLAIMS:
        if claim.id in ("C7", "C8", "C9"):
            assert all(c.claimed_difference is None for c in claim.comparisons)
    with pytest.raises(ValueError, match="not a number"):
        Claim("Cx", "t", "non-inferiority", "iou", (Comparison("a", "b", 0.01, "s", claimed_on="d"),))
    with pytest.raises(ValueError, match="two different scores"):
        Comparison("a", "a", None, "s", better_level="L4", baseline_level="L4")


def test_the_paper_metric_table_puts_the_unetpp_papers_row_beside_the_studys():
    """The paper's networks in the paper's Keras mean_iou; the default grid's in two-class mIoU; intervals over seeds;
    a variant without runs says so."""
    seeds = {"unet": [0.90, 0.92], "unet_2018": [0.91, 0.93], "unetpp": [0.90, 0.90]}
    rows = [
        {"dataset": "dsb2018-nuclei-96", "model": model, "seed": k, "miou_bg": value, "iou": value - 0.07}
        | ({"keras_mean_iou": value - 0.01} if model.endswith("_2018") else {})
        for model, values in seeds.items()
        for k, value in enumerate(values)
    ]
    table = tables.paper_metric_table(pd.DataFrame(rows)).set_index("study_variant")
    assert table.loc["unet_2018", "metric"] == "keras_mean_iou" and table.loc["unet", "metric"] == "miou_bg"
    assert table.loc["unet_2018", "mean"] == pytest.approx(91.0) and table.loc["unet", "mean"] == pytest.approx(91.0)
    # Two seeds 2 points apart: a 95% t interval of +-12.706 * 1.414 / sqrt(2) = +-12.706 points.
    assert table.loc["unet", "ci_high"] - table.loc["unet", "mean"] == pytest.approx(12.706, abs=1e-3)
    assert table.loc["unet", "gap_to_paper"] == pytest.approx(91.0 - 90.77)
    assert table.loc["unetpp_2018", "n_seeds"] == 0 and math.isnan(table.loc["unetpp_2018", "mean"])
    shown = tables.format_paper_metric_table(table.reset_index()).set_index("study variant")
    assert shown.loc["unetpp_2018", "study"] == "no runs yet" and shown.loc["unetpp", "study"].startswith("90.00 [")


def test_the_metric_bridge_pairs_the_papers_metric_with_the_studys_on_the_same_runs():
    """Each 2018 run's keras_mean_iou - miou_bg and - iou, in points, per variant and pooled over them; the default
    grid's runs (no keras_mean_iou) take no part, and a variant without runs says so."""
    rows = [
        {"dataset": "dsb2018-nuclei-96", "model": model, "seed": k, "keras_mean_iou": keras, "miou_bg": bg, "iou": iou}
        for model, k, keras, bg, iou in (
            ("unet_2018", 0, 0.86, 0.88, 0.78),
            ("unet_2018", 1, 0.84, 0.85, 0.76),
            ("unetpp_2018", 0, 0.90, 0.89, 0.81),
        )
    ] + [{"dataset": "dsb2018-nuclei-96", "model": "unet", "seed": 0, "miou_bg": 0.90, "iou": 0.83}]
    bridge = tables.paper_metric_bridge(pd.DataFrame(rows)).set_index("study_variant")
    assert bridge.loc["unet_2018", "n_runs"] == 2
    assert bridge.loc["unet_2018", "keras_minus_miou_bg"] == pytest.approx(-1.5)  # -2 and -1 points
    assert bridge.loc["unet_2018", "keras_minus_iou"] == pytest.approx(8.0)
    # Two values 1 point apart: +-12.706 * 0.7071 / sqrt(2) = +-6.353.
    assert bridge.loc["unet_2018", "keras_minus_miou_bg_ci_high"] == pytest.approx(-1.5 + 6.353, abs=1e-3)
    assert bridge.loc["all", "n_runs"] == 3 and bridge.loc["all", "keras_minus_miou_bg"] == pytest.approx(-2 / 3)
    assert bridge.loc["wide_unet_2018", "n_runs"] == 0 and math.isnan(bridge.loc["wide_unet_2018", "keras_minus_iou"])
    shown = tables.format_paper_metric_bridge(bridge.reset_index()).set_index("study variant")
    assert shown.loc["wide_unet_2018", "paper's metric - foreground IoU"] == "no runs yet"
    assert shown.loc["unetpp_2018", "paper's metric - two-class mIoU"] == "+1.00"  # one run: no interval


def _paper_rows(foreground: float, nearest: float, own: float | None = None) -> pd.DataFrame:
    """The paper table (points) with every paper network of the study's recipe at ``foreground`` IoU below the
    paper by the same amount and ``nearest`` two-class mIoU below it, and the 2018 networks at ``own`` foreground IoU
    below the recipe's (None: no runs)."""
    rows = []
    for network, paper in tables.UNETPP_PAPER_DSB2018.items():
        rows.append(
            {"study_variant": network, "n_seeds": 5, "mean": paper - nearest, "foreground_iou": paper - foreground}
        )
        rows.append(
            {
                "study_variant": f"{network}_2018",
                "n_seeds": 0 if own is None else 5,
                "mean": paper - 8.0,
                "gap_to_paper": -8.0,
                "foreground_iou": paper - foreground - (own or 0.0),
            }
        )
    return pd.DataFrame(rows)


def _bridge(shift: float | None) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "study_variant": "all",
                "n_runs": 0 if shift is None else 12,
                "keras_minus_miou_bg": shift,
                "keras_minus_miou_bg_ci_low": None if shift is None else shift - 1,
                "keras_minus_miou_bg_ci_high": None if shift is None else shift + 1,
                "keras_minus_iou": None if shift is None else 7.0,
            }
        ]
    )


@pytest.mark.parametrize(
    ("nearest", "shift", "answer"),
    [
        (1.0, -1.0, "Mostly, yes: the metric closes 75-88% of it."),  # 7/8 and 6/8 of an 8-point gap
        (1.0, -4.0, "In large part: the metric closes 38-88% of it."),
        (5.0, 0.0, "Partly: the metric closes 38% of it."),
        (7.0, -1.0, "No: the metric closes 0-12% of it."),
        (1.0, None, "Mostly, yes: the metric closes 88% of it."),  # no run records both metrics: one estimate
    ],
)
def test_the_paper_gap_reading_words_the_share_the_metric_closes_by_a_fixed_rule(nearest, shift, answer):
    reading = tables.paper_gap_reading(_paper_rows(foreground=8.0, nearest=nearest), _bridge(shift))
    assert reading.startswith(f"**Was the level gap the metric? {answer}**"), reading
    assert "-8.00, -8.00, -8.00 points from the paper's 90.77, 90.92, 92.63" in reading
    assert ("were the recipe's runs as far apart" in reading) == (shift is not None)
    assert "+1.86 points in the paper, +1.86 in the study's recipe" in reading
    assert "2018 networks" not in reading.split("UNet++'s lead over U-Net")[1]  # none trained


def test_the_paper_gap_reading_names_the_2018_networks_shortfall_as_training_only_when_it_shows_in_foreground_iou():
    behind = tables.paper_gap_reading(_paper_rows(8.0, 1.0, own=6.0), _bridge(-1.0))
    assert "score 82.77, 82.92, 84.63 in the paper's metric (-8.00, -8.00, -8.00 against the paper)" in behind
    assert behind.endswith("so that shortfall is how they train here, not the metric.")
    level = tables.paper_gap_reading(_paper_rows(8.0, 1.0, own=-0.5), _bridge(-1.0))
    assert level.endswith("+0.50, +0.50, +0.50 points from the study's recipe in foreground IoU.")


def test_the_paper_gap_reading_is_empty_without_the_recipes_runs_and_says_when_there_is_no_gap():
    missing = _paper_rows(8.0, 1.0)
    missing.loc[missing["study_variant"] == "unetpp", "n_seeds"] = 0
    assert tables.paper_gap_reading(missing, _bridge(-1.0)) == ""
    above = tables.paper_gap_reading(_paper_rows(foreground=-0.5, nearest=-3.0), _bridge(-1.0))
    assert "There is none to explain" in above


HIPPOCAMPUS, ATRIUM = "msd-task04-hippocampus", "la2018-atrium-lgemri"
# A universal network of both domains: shared pointwise kernels, each domain's own blocks, and the paper's
# independent models (one standard-convolution network per domain).
SPLIT = {"shared": 1_000_000, "per_domain": [20_000, 30_000], "independent_standard": [5_000_000, 6_000_000]}


def write_parameter_record(
    runs_dir: Path, dataset: str, model: str, seed: int, params: int, split: dict | None = None
) -> Path:
    """The fields of a run's metrics.json that the parameters table reads; a universal run's (``split``) adds
    ``domains``, ``domain`` and ``params_split`` as repro.training.record.write_domain_outputs does."""
    record = {"dataset": dataset, "model": model, "seed": seed, "scale": "cpu", "params": params, "test": {}}
    if split is not None:
        domains = [HIPPOCAMPUS, ATRIUM]
        record |= {"domains": domains, "domain": domains.index(dataset), "params_split": split}
    path = runs_dir / dataset / model / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return path


def write_universal_study(runs_dir: Path) -> None:
    """Two seeds of u2net3d_universal (a record per domain), u2net3d on both domains (seed 1 on Hippocampus only),
    and a 2D run the table leaves alone."""
    for seed in (0, 1):
        for dataset in (HIPPOCAMPUS, ATRIUM):
            write_parameter_record(runs_dir, dataset, "u2net3d_universal", seed, 1_050_000, SPLIT)
    write_parameter_record(runs_dir, HIPPOCAMPUS, "u2net3d", 0, 1_020_000)
    write_parameter_record(runs_dir, HIPPOCAMPUS, "u2net3d", 1, 1_020_000)
    write_parameter_record(runs_dir, ATRIUM, "u2net3d", 0, 1_030_000)
    write_parameter_record(runs_dir, "kvasir-seg", "unet", 0, 7_760_000)


def test_the_universal_parameters_table_gives_both_ratios_beside_the_papers(tmp_path):
    write_universal_study(tmp_path)
    table = tables.universal_parameters_table(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["scale"], row["variant"], row["domains"]) == ("cpu", "u2net3d_universal", f"{HIPPOCAMPUS}+{ATRIUM}")
    assert (row["n_seeds"], row["params"], row["shared"], row["per_domain"]) == (
        2,
        1_050_000,
        1_000_000,
        "20000 + 30000",
    )
    # The trained independent models: u2net3d (C15's baseline) on each domain, summed.
    assert (row["independent_variant"], row["independent_params"], row["independent_missing"]) == (
        "u2net3d",
        2_050_000,
        "",
    )
    assert row["ratio_to_independent"] == pytest.approx(1_050_000 / 2_050_000)
    assert row["independent_standard"] == 11_000_000
    assert row["ratio_to_standard"] == pytest.approx(1_050_000 / 11_000_000)
    assert row["paper"] == "about 1%"
    shown = tables.format_universal_parameters_table(table).iloc[0]
    assert (shown["params (M)"], shown["per domain (M)"], shown["independent (trained, M)"]) == (
        "1.05",
        "0.0200 + 0.0300",
        "2.05",
    )
    assert (shown["universal / trained"], shown["universal / standard conv."]) == ("51.2%", "9.55%")
    assert shown["domains"] == f"{HIPPOCAMPUS}, {ATRIUM}" and shown["paper"] == "about 1%"


def test_the_universal_parameters_table_names_a_domain_without_an_independent_run(tmp_path):
    write_universal_study(tmp_path)
    (tmp_path / ATRIUM / "u2net3d" / "seed0" / "metrics.json").unlink()
    row = tables.universal_parameters_table(tmp_path).iloc[0]
    assert row["independent_missing"] == ATRIUM and pd.isna(row["independent_params"])
    assert math.isnan(row["ratio_to_independent"]) and row["ratio_to_standard"] == pytest.approx(1_050_000 / 11_000_000)
    shown = tables.format_universal_parameters_table(tables.universal_parameters_table(tmp_path)).iloc[0]
    assert shown["independent (trained, M)"] == f"no u2net3d run on {ATRIUM}" and shown["universal / trained"] == ""


@pytest.mark.parametrize(
    ("dataset", "model", "params", "split"),
    [
        (ATRIUM, "u2net3d_universal", 1_051_000, SPLIT | {"shared": 1_001_000}),  # another network
        (ATRIUM, "u2net3d_universal", 1_050_000, SPLIT | {"independent_standard": [5_000_000, 6_000_001]}),
        (ATRIUM, "u2net3d_universal", 1_060_000, SPLIT),  # params is not shared + per domain
        (ATRIUM, "u2net3d_universal", 1_020_000, SPLIT | {"per_domain": [20_000]}),  # not a number per domain
        (ATRIUM, "u2net3d", 1_030_001, None),  # an independent run unlike the other seed of its domain
    ],
)
def test_the_universal_parameters_table_refuses_records_that_disagree(tmp_path, dataset, model, params, split):
    write_universal_study(tmp_path)
    path = write_parameter_record(tmp_path, dataset, model, 2, params, split)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        tables.universal_parameters_table(tmp_path)


def test_the_universal_parameters_table_is_empty_without_universal_runs(tmp_path):
    write_parameter_record(tmp_path, HIPPOCAMPUS, "u2net3d", 0, 1_020_000)
    for runs_dir in (tmp_path, tmp_path / "none"):
        table = tables.universal_parameters_table(runs_dir)
        assert table.empty and list(table.columns) == tables.UNIVERSAL_PARAMETER_COLUMNS
        shown = tables.format_universal_parameters_table(table)
        assert shown.empty and "universal / standard conv." in shown.columns

"""Tests of repro.report on synthetic runs written in the training stage's output schema."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from repro import report
from repro.claims import CLAIMS
from repro.stats import holm_bonferroni, seeds_needed

# Image offsets and noise sum to zero, so a run's test Dice (mean over images) equals its seed-level Dice.
IMAGE_OFFSETS = np.array([-0.05, -0.02, 0.0, 0.01, 0.02, 0.04])
# Each variant's image noise is this vector rolled by the variant's index in KVASIR_DICE, so that per-image
# differences between compared variants are not constant (which would make the per-image t-test degenerate).
IMAGE_NOISE = np.array([0.004, -0.003, 0.002, -0.004, 0.003, -0.002])
SEED_EFFECTS = np.array([0.010, -0.005, 0.000, 0.004, -0.009])
UNET = 0.80 + SEED_EFFECTS
# Seed-level test Dice of each variant on "kvasir-seg", built so that every verdict must occur:
KVASIR_DICE = {
    "unet": UNET,
    "unetpp": UNET + 0.05 + np.array([0.003, -0.002, 0.001, 0.0, -0.002]),  # C1: reproduced
    "wide_unet": UNET + 0.08,  # C2: UNet++ significantly worse than claimed -> contradicted (opposite sign)
    "tinyunet": UNET + np.array([0.002, -0.002, 0.001, -0.001, 0.0]),  # C3: CI far below +2.8 mIoU
    "tinyunet_plain": UNET + np.array([0.03, -0.04, 0.02, -0.01, -0.005]),  # C4a: noisy, no claim size
    "unet_bilinear": UNET,
    "light_unet": UNET + np.array([0.001, -0.001, 0.002, -0.002, 0.0005]),  # C6: equivalent
    "lighter_unet_128": UNET + np.array([0.03, -0.03, 0.025, -0.02, 0.0]),  # C6: too noisy to tell
    "lighter_unet_1": UNET - 0.06 + np.array([0.002, -0.001, 0.0, 0.001, -0.002]),  # C6: clearly worse
}
PARAMS = {"unet": 7_760_000, "unetpp": 9_040_000, "tinyunet": 480_000}


def write_run(runs_dir: Path, dataset: str, model: str, seed: int, dice: float, pruned: bool = False) -> None:
    """Write metrics.json and per_image.csv of one run, as the training stage does."""
    image_dice = dice + IMAGE_OFFSETS + np.roll(IMAGE_NOISE, list(KVASIR_DICE).index(model))
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
    }
    if pruned:
        metrics["test_pruned"] = {"L1": {key: value for key, value in test.items() if key != "per_class"}}
    run_dir = runs_dir / dataset / model / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    images.to_csv(run_dir / "per_image.csv", index=False)


def write_study(runs_dir: Path) -> None:
    """kvasir-seg: 5 seeds of every variant in KVASIR_DICE; isic2018: U-Net (3 seeds), UNet++ (seed 0 only)."""
    for model, seed_dice in KVASIR_DICE.items():
        for seed, dice in enumerate(seed_dice):
            write_run(runs_dir, "kvasir-seg", model, seed, dice, pruned=model == "unetpp")
    for seed in range(3):
        write_run(runs_dir, "isic2018", "unet", seed, 0.85 + SEED_EFFECTS[seed])
    write_run(runs_dir, "isic2018", "unetpp", 0, 0.86)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("results") / "runs"
    write_study(runs_dir)
    return report.load_runs(runs_dir)


@pytest.fixture(scope="module")
def claims_table(runs):
    return report.evaluate_claims(runs, alpha=0.05, tost_margin=0.02)


def verdict_of(claims_table, dataset, better, baseline):
    row = claims_table[
        (claims_table["dataset"] == dataset)
        & (claims_table["better"] == better)
        & (claims_table["baseline"] == baseline)
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_load_runs_is_tidy(runs):
    per_seed, per_image = runs.per_seed, runs.per_image
    assert len(per_seed) == 5 * len(KVASIR_DICE) + 4
    assert not per_seed.duplicated(["dataset", "model", "seed"]).any()
    assert {"dice", "iou", "miou_bg", "dice_pooled", "dice_polyp", "iou_polyp", "params", "flops"} <= set(per_seed)
    assert per_seed["pruned_L1_dice"].notna().sum() == 5
    unetpp = per_seed[(per_seed["dataset"] == "kvasir-seg") & (per_seed["model"] == "unetpp")]
    np.testing.assert_allclose(unetpp["dice"], KVASIR_DICE["unetpp"])
    assert len(per_image) == len(per_seed) * len(IMAGE_OFFSETS)
    assert list(per_image.columns[:4]) == ["dataset", "model", "seed", "id"]
    assert per_image["id"].iloc[0] == "case00"


def test_load_runs_rejects_misplaced_and_missing_runs(tmp_path):
    with pytest.raises(FileNotFoundError):
        report.load_runs(tmp_path / "nothing")
    write_run(tmp_path, "kvasir-seg", "unet", 0, 0.8)
    (tmp_path / "kvasir-seg" / "unet").rename(tmp_path / "kvasir-seg" / "unetpp")
    with pytest.raises(ValueError, match="does not match its folder"):
        report.load_runs(tmp_path)


def test_results_table(runs):
    table = report.results_table(runs.per_seed)
    assert len(table) == len(KVASIR_DICE) + 2
    unetpp = table[(table["dataset"] == "kvasir-seg") & (table["model"] == "unetpp")].iloc[0]
    assert unetpp["n_seeds"] == 5
    assert unetpp["dice_mean"] == pytest.approx(KVASIR_DICE["unetpp"].mean())
    assert unetpp["dice_sd"] == pytest.approx(KVASIR_DICE["unetpp"].std(ddof=1))
    assert unetpp["params"] == PARAMS["unetpp"] and unetpp["gflops"] == pytest.approx(1.5)
    single_seed = table[(table["dataset"] == "isic2018") & (table["model"] == "unetpp")].iloc[0]
    assert np.isnan(single_seed["dice_sd"])


def test_write_table_csv_markdown_latex(runs, tmp_path):
    table = report.results_table(runs.per_seed)
    display = report.format_results_table(table)
    paths = report.write_table(table, tmp_path / "tables" / "results", display=display)
    assert [path.suffix for path in paths] == [".csv", ".md", ".tex"]
    assert len(pd.read_csv(paths[0])) == len(table)
    markdown = paths[1].read_text().splitlines()
    assert markdown[0].startswith("| dataset | model | seeds | Dice |")
    assert markdown[1].startswith("| :--- | :--- | ---: |")
    assert len(markdown) == len(table) + 2
    # UNet++ on kvasir-seg: 0.80 + 0.05; seed deviations 13, -7, 1, 4, -11 (x 0.001): s.d. sqrt(356e-6 / 4) = 0.0094.
    assert "| kvasir-seg | unetpp | 5 | 0.850 ± 0.009 |" in paths[1].read_text()
    latex = paths[2].read_text()
    assert "\\begin{tabular}" in latex and "unet\\_bilinear" in latex


def test_markdown_table_formats_cells():
    df = pd.DataFrame({"name": ["a|b", "c"], "value": [0.123456, np.nan], "count": pd.array([3, None], "Int64")})
    assert report.markdown_table(df, float_digits=2) == (
        "| name | value | count |\n| :--- | ---: | ---: |\n| a\\|b | 0.12 | 3 |\n| c |  |  |\n"
    )


def test_claims_table_covers_every_comparison_and_dataset(claims_table):
    n_comparisons = sum(len(claim.comparisons) for claim in CLAIMS)
    assert len(claims_table) == 2 * n_comparisons
    assert list(claims_table.columns) == report.CLAIM_COLUMNS
    assert set(claims_table["verdict"]) <= set(report.VERDICTS)


def test_superiority_verdicts(claims_table):
    reproduced = verdict_of(claims_table, "kvasir-seg", "unetpp", "unet")
    assert reproduced["verdict"] == "reproduced" and reproduced["mean_diff"] > 0
    opposite = verdict_of(claims_table, "kvasir-seg", "unetpp", "wide_unet")
    assert opposite["verdict"] == "contradicted" and opposite["mean_diff"] < 0 and opposite["p_holm"] < 0.05
    below_claim = verdict_of(claims_table, "kvasir-seg", "tinyunet", "unet")
    assert below_claim["verdict"] == "contradicted"
    assert below_claim["p_holm"] >= 0.05 and below_claim["ci_high"] < below_claim["claimed_difference"]
    no_claimed_size = verdict_of(claims_table, "kvasir-seg", "tinyunet", "tinyunet_plain")
    assert no_claimed_size["verdict"] == "inconclusive" and pd.isna(no_claimed_size["seeds_needed"])
    one_matched_seed = verdict_of(claims_table, "isic2018", "unetpp", "unet")
    assert one_matched_seed["verdict"] == "inconclusive" and one_matched_seed["n_seeds"] == 1
    assert verdict_of(claims_table, "isic2018", "unetpp", "wide_unet")["verdict"] == "not run"
    assert verdict_of(claims_table, "kvasir-seg", "unetv2", "unetv2_nosdi")["verdict"] == "not run"


def test_equivalence_verdicts(claims_table):
    equivalent = verdict_of(claims_table, "kvasir-seg", "light_unet", "unet_bilinear")
    assert equivalent["verdict"] == "reproduced" and equivalent["tost_p"] < 0.05
    noisy = verdict_of(claims_table, "kvasir-seg", "lighter_unet_128", "unet_bilinear")
    assert noisy["verdict"] == "inconclusive"
    worse = verdict_of(claims_table, "kvasir-seg", "lighter_unet_1", "unet_bilinear")
    assert worse["verdict"] == "contradicted" and worse["ci_high"] < -0.02
    assert pd.isna(worse["p_holm"]) and pd.isna(worse["seeds_needed"])


def test_holm_family_is_every_tested_superiority_comparison(claims_table):
    family = claims_table[(claims_table["kind"] == "superiority") & claims_table["p"].notna()]
    assert len(family) == 4  # unetpp-unet, unetpp-wide_unet, tinyunet-unet, tinyunet-tinyunet_plain
    np.testing.assert_allclose(family["p_holm"], holm_bonferroni(family["p"].to_numpy()))


def test_secondary_statistics(claims_table):
    row = verdict_of(claims_table, "kvasir-seg", "unetpp", "unet")
    assert row["n_seeds"] == 5 and row["n_images"] == len(IMAGE_OFFSETS)
    assert row["wilcoxon_p"] == pytest.approx(0.0625)  # all 5 differences positive
    assert row["seeds_needed"] == str(seeds_needed(row["sd_diff"], 0.0186))  # the paper's +1.86 IoU
    assert int(row["seeds_needed"]) <= 5
    assert 0 < row["mdd"] < row["mean_diff"]
    assert row["image_p"] < 0.05 and row["image_mean_diff"] > 0


def test_claim_verdicts_combine_comparisons(claims_table):
    per_claim = report.claim_verdicts(claims_table).set_index(["claim_id", "dataset"])["verdict"]
    assert per_claim[("C1", "kvasir-seg")] == "reproduced"
    assert per_claim[("C6", "kvasir-seg")] == "contradicted"  # lighter_unet_1 is not equivalent
    assert per_claim[("C4c", "kvasir-seg")] == "not run"
    partly_run = pd.DataFrame({"claim_id": "X", "title": "x", "dataset": "d", "verdict": ["reproduced", "not run"]})
    assert report.claim_verdicts(partly_run)["verdict"].item() == "inconclusive"


def test_format_claims_table_is_rounded(claims_table):
    shown = report.format_claims_table(claims_table, digits=3)
    assert len(shown) == len(claims_table)
    assert (shown["diff"].dropna() == shown["diff"].dropna().round(3)).all()
    kvasir = shown[shown["dataset"] == "kvasir-seg"].set_index("comparison")
    assert kvasir.loc["unetpp - unet", "CI"].startswith("[0.0")
    assert kvasir.loc["unetv2 - unetv2_nosdi", "CI"] == ""


def test_verdict_rule_states_the_thresholds():
    rule = report.verdict_rule(alpha=0.01, tost_margin=0.03)
    assert "Holm-adjusted p < 0.01" in rule and "+/-0.03" in rule and "99% CI" in rule


def test_figures_are_written(runs, claims_table, tmp_path):
    table = report.results_table(runs.per_seed)
    figures = {
        "seed_dice.png": report.plot_seed_scores(runs.per_seed),
        "forest.png": report.plot_forest(claims_table),
        "efficiency.png": report.plot_efficiency(table),
    }
    for name, fig in figures.items():
        path = report.save_figure(fig, tmp_path / "figures" / name)
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
        plt.close(fig)


def test_stats_json_round_trips(runs, claims_table, tmp_path):
    summary = report.stats_summary(report.results_table(runs.per_seed), claims_table, alpha=0.05, tost_margin=0.02)
    path = report.write_stats_json(summary, tmp_path / "stats.json")
    loaded = json.loads(path.read_text())
    assert loaded["settings"] == {"alpha": 0.05, "tost_margin": 0.02, "power": 0.8}
    assert len(loaded["comparisons"]) == len(claims_table)
    assert sum(loaded["verdict_counts"].values()) == len(loaded["claims"])
    assert loaded["verdict_counts"]["reproduced"] >= 1


def test_reporting_modules_do_not_import_torch():
    code = "import sys, repro.report, repro.stats, repro.claims; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_claims_are_well_formed():
    assert len({claim.id for claim in CLAIMS}) == len(CLAIMS)
    for claim in CLAIMS:
        assert claim.kind in ("superiority", "equivalence") and claim.metric in ("dice", "iou", "miou_bg")
        assert claim.comparisons
        for comparison in claim.comparisons:
            assert comparison.better != comparison.baseline and comparison.source
    n8 = next(claim for claim in CLAIMS if claim.id == "C4c")
    # NCP mIoU 80.27 at N = 8 minus 79.24 / 79.58 / 79.77 / 79.56 at N = 1 / 2 / 4 / 16.
    assert [c.claimed_difference for c in n8.comparisons] == pytest.approx([0.0103, 0.0069, 0.0050, 0.0071])


def test_seed_figure_is_byte_identical_across_runs_and_leaves_numpy_alone(runs, tmp_path):
    """DVC hashes the figures: re-running the aggregation must not change them (seaborn's jitter is random)."""
    pictures = []
    for k in range(2):
        np.random.uniform()  # noqa: NPY002 - a different global state each time
        before = np.random.get_state()  # noqa: NPY002
        fig = report.plot_seed_scores(runs.per_seed)
        after = np.random.get_state()  # noqa: NPY002
        assert (before[1] == after[1]).all() and before[2] == after[2]
        pictures.append(report.save_figure(fig, tmp_path / f"seed_dice{k}.png").read_bytes())
        plt.close(fig)
    assert pictures[0] == pictures[1]

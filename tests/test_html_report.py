"""Tests of repro.analysis.html_report: on small runs written here with known numbers, through DVC's metrics and plots
on the archived first version of the study (results/v1) laid out where the pipeline writes, and in headless Chromium
on a report built from that archived study."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from PIL import Image

from repro.analysis import html_report, verdicts
from repro.analysis.run_results import training_code_version
from repro.analysis.verdicts import LABELS

ROOT = Path(__file__).resolve().parents[1]
# The study's first version, archived with its report: a real study to read back, whatever the current scale holds.
V1 = ROOT / "results" / "v1"
DATASETS = ("alpha-set", "beta-set")
MODELS = ("unet", "unetpp")
# Per-epoch validation Dice of seeds 0 and 1; the curves file must hold their mean.
VAL_DICE = {0: [0.1, 0.2, 0.3], 1: [0.3, 0.5, 0.4]}
VAL_DICE_MEAN = [0.2, 0.35, 0.35]
CODE_MARKER = "this_source_line_must_not_be_in_the_report = 1"


class _Page(HTMLParser):
    """The parts of a report page the tests look at: the verdict table's rows (each cell's text, its lines joined by
    newlines: a verdict, then a line per ``div``, the effect of each of its comparisons), links and images."""

    def __init__(self, text: str):
        super().__init__()
        self.verdict_rows: list[list[str]] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "tr" and self._table == "verdicts":
            self.verdict_rows.append([])
        elif tag in ("td", "th") and self._table == "verdicts":
            self._cell = []
        elif tag == "div" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            lines = "".join(self._cell).split("\n")
            self.verdict_rows[-1].append("\n".join(line.strip() for line in lines if line.strip()))
            self._cell = None
        elif tag == "table":
            self._table = None


def _png_base64(size=(40, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write_aggregate_notebook(path: Path, png: str) -> None:
    code = nbformat.v4.new_code_cell(CODE_MARKER)
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Aggregate of the test study"), code])
    nbformat.write(nb, path)


MARGIN = 0.02
# Per dataset, C1's mean difference and its family-wise interval (ci_adj).
EFFECTS = {"alpha-set": (0.03, 0.01, 0.05), "beta-set": (-0.0019, -0.0082, 0.0044)}


def _comparison(claim_id, dataset, better, baseline, kind, claimed, effect, better_level=None, tost=(None, None)):
    """One row of stats.json's comparisons, with the fields the verdict table prints (``effect``: mean difference and
    the family's interval, None where it did not run; ``tost``: the TOST's own interval, for equivalence)."""
    mean_diff, ci_adj_low, ci_adj_high = effect or (None, None, None)
    verdict = "not run" if effect is None else "reproduced"
    return {
        "claim_id": claim_id,
        "dataset": dataset,
        "better": better,
        "baseline": baseline,
        "better_level": better_level,
        "baseline_level": None,
        "metric": "iou",
        "kind": kind,
        "claimed_difference": claimed,
        "mean_diff": mean_diff,
        "ci_adj_low": ci_adj_low,
        "ci_adj_high": ci_adj_high,
        "tost_ci_low": tost[0],
        "tost_ci_high": tost[1],
        "verdict": verdict,
    }


@pytest.fixture
def study(tmp_path) -> dict[str, Path]:
    """2 datasets x 2 variants x 2 seeds of runs, their notebooks, a stats.json and an executed aggregate, laid out
    as the pipeline lays out a study at scale smoke (results/smoke/)."""
    runs, notebooks = tmp_path / "results/smoke/runs", tmp_path / "results/smoke/notebooks"
    results, claims, comparisons = [], [], []
    for d, dataset in enumerate(DATASETS):
        for m, model in enumerate(MODELS):
            for seed in (0, 1):
                run_dir = runs / dataset / model / f"seed{seed}"
                run_dir.mkdir(parents=True)
                metrics = {
                    "dataset": dataset,
                    "model": model,
                    "seed": seed,
                    "scale": "smoke",
                    "epochs": 3,
                    "image_size": 32,
                    "device": "cpu",
                    "train_seconds": 1.5,
                    "git_commit": "0123456789abcdef",
                    "code_files": {"repro/train.py": "0" * 32},
                    "test": {"dice": 0.5 + 0.1 * m + 0.01 * seed, "iou": 0.4},
                }
                (run_dir / "metrics.json").write_text(json.dumps(metrics))
                history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.5], "val_dice": VAL_DICE[seed]})
                history.to_csv(run_dir / "history.csv", index=False)
                pd.DataFrame({"id": ["a", "b"], "dice": [0.5, 0.6], "iou": [0.4, 0.5]}).to_csv(
                    run_dir / "per_image.csv", index=False
                )
                notebook_dir = notebooks / dataset / model / f"seed{seed}"
                notebook_dir.mkdir(parents=True)
                nbformat.write(nbformat.v4.new_notebook(), notebook_dir / "train.ipynb")
            results.append({"dataset": dataset, "model": model, "dice_mean": 0.6 + 0.1 * d + 0.01 * m})
        claims.append({"claim_id": "C1", "title": "UNet++ beats U-Net", "dataset": dataset, "verdict": "reproduced"})
        claims.append({"claim_id": "C2", "title": "Never run", "dataset": dataset, "verdict": "not run"})
        comparisons.append(_comparison("C1", dataset, "unetpp", "unet", "superiority", 0.0186, EFFECTS[dataset]))
        comparisons.append(_comparison("C2", dataset, "wide_unet", "unet", "superiority", None, None))
    stats = tmp_path / "results/smoke/stats.json"
    summary = {"settings": {"tost_margin": MARGIN}, "results": results, "comparisons": comparisons, "claims": claims}
    stats.write_text(json.dumps(summary))
    aggregate = tmp_path / "results/smoke/aggregate.ipynb"
    png = _png_base64()
    _write_aggregate_notebook(aggregate, png)
    return {
        "aggregate": aggregate,
        "stats": stats,
        "runs": runs,
        "notebooks": notebooks,
        "out": tmp_path / "results/smoke/report",
        "png": png,
    }


def _build(study: dict) -> Path:
    keys = ("aggregate", "stats", "runs", "notebooks", "out")
    return html_report.build_report(*(study[key] for key in keys))


def test_metrics_summaries_are_a_few_flat_headline_numbers_per_dataset(study):
    _build(study)
    stats = json.loads(study["stats"].read_text())
    for dataset in DATASETS:
        summary = json.loads((study["out"] / "metrics" / f"{dataset}.json").read_text())
        dice = {row["model"]: row["dice_mean"] for row in stats["results"] if row["dataset"] == dataset}
        best = max(dice, key=dice.get)
        assert summary == {
            "runs": 4,
            "variants": len(MODELS),
            "best": best,
            "best_dice": dice[best],
            "confirmed": 1,  # C1: reproduced
            "refuted": 0,
            "inconclusive": 0,
            "not_run": 1,  # C2
        }


def test_the_summary_counts_every_label_under_exactly_one_outcome():
    said = [label for labels in verdicts.OUTCOMES.values() for label in labels]
    assert sorted(said) == sorted(verdicts.LABELS)
    assert {*verdicts.OUTCOMES["confirmed"], *verdicts.OUTCOMES["refuted"]} == set(verdicts.DECISIVE)


def test_learning_curves_are_the_mean_over_seeds_per_variant(study):
    _build(study)
    for dataset in DATASETS:
        curves = pd.read_csv(study["out"] / "curves" / "val_dice" / f"{dataset}.csv")
        assert list(curves.columns) == ["epoch", "model", "val_dice"]
        for model in MODELS:
            curve = curves[curves["model"] == model]
            assert curve["epoch"].tolist() == [1, 2, 3]
            assert curve["val_dice"].tolist() == pytest.approx(VAL_DICE_MEAN)
        loss = pd.read_csv(study["out"] / "curves" / "train_loss" / f"{dataset}.csv")
        assert loss.loc[loss["model"] == "unet", "train_loss"].tolist() == pytest.approx([1.0, 0.8, 0.5])


def test_index_links_every_run_notebook_and_tabulates_the_verdicts(study):
    index = _build(study)
    page = _Page(index.read_text())
    notebooks = {(index.parent / link).resolve() for link in page.links if link.endswith(".ipynb")}
    assert notebooks == {path.resolve() for path in study["notebooks"].glob("*/*/seed*/train.ipynb")}
    assert len(notebooks) == 8
    assert f"{training_code_version({'repro/train.py': '0' * 32})} (8)</li>" in index.read_text()
    assert (index.parent / "aggregate.html").is_file() and "aggregate.html" in page.links
    assert page.verdict_rows[0] == ["claim", "statement", *DATASETS]
    assert page.verdict_rows[1:] == [
        [
            "C1",
            "UNet++ beats U-Net",
            "reproduced\niou +0.0300 [+0.0100, +0.0500] vs claimed +0.0186",
            "reproduced\niou -0.0019 [-0.0082, +0.0044] vs claimed +0.0186",
        ],
        ["C2", "Never run", "not run", "not run"],
    ]


def test_each_verdict_cell_gives_the_effect_its_interval_and_the_claim_under_the_label():
    """The numbers as the README's effects table prints them (tests/test_readme.py's rows): an equivalence row with
    the TOST's own interval and the margin, the paper's difference beside; a claim of several comparisons names each
    with its own label, one that did not run too, and lists nothing where none ran; a non-inferiority row its margin;
    a row of one matched seed (no interval) its mean alone."""

    def labelled(verdict, *args, **kwargs):
        return _comparison(*args, **kwargs) | {"verdict": verdict}

    comparisons = [
        labelled("equivalent", "C6", "a", "light", "bilinear", "equivalence", -0.002, (0.006, -0.0001, 0.0121),
                 tost=(0.0031, 0.0089)),
        labelled("not equivalent", "C6", "a", "lighter", "bilinear", "equivalence", None, (-0.11, -0.24, 0.01),
                 better_level="L3", tost=(-0.17, -0.06)),
        _comparison("C6", "a", "lightest", "bilinear", "equivalence", -0.011, None),
        labelled("non-inferior", "C9", "a", "deep", "deep", "non-inferiority", None, (0.0004, -0.0012, 0.0019)),
        labelled("inconclusive", "C3", "a", "tinyunet", "unet_w1", "superiority", 0.028, (0.01, None, None)),
        _comparison("C4", "a", "cmrf_n2", "cmrf", "superiority", None, None),
        _comparison("C4", "a", "cmrf_n4", "cmrf", "superiority", None, None),
    ]  # fmt: skip
    verdict = {"C6": "not equivalent", "C9": "non-inferior", "C3": "inconclusive", "C4": "not run"}
    claims = [{"claim_id": c, "title": f"claim {c}", "dataset": "a", "verdict": v} for c, v in verdict.items()]
    stats = {"settings": {"tost_margin": MARGIN}, "claims": claims, "comparisons": comparisons}
    path = Path("stats.json")
    table = html_report._verdict_table(
        html_report._claims(stats, path), html_report._comparisons(stats, path), html_report._margin(stats, path)
    )
    cells = {row[0]: row[2] for row in _Page(table).verdict_rows[1:]}
    assert cells == {
        "C6": "not equivalent\n"
        "light - bilinear: equivalent, iou +0.0060 [+0.0031, +0.0089] vs claimed within ±0.02 (paper: -0.0020)\n"
        "lighter@L3 - bilinear: not equivalent, iou -0.1100 [-0.1700, -0.0600] vs claimed within ±0.02\n"
        "lightest - bilinear: not run",
        "C4": "not run",  # none of its comparisons ran: nothing to list
        "C9": "non-inferior\niou +0.0004 [-0.0012, +0.0019] vs claimed > -0.02",
        "C3": "inconclusive\niou +0.0100 vs claimed +0.0280",
    }


def test_aggregate_page_embeds_figures_hides_code_and_loads_nothing(study):
    _build(study)
    text = (study["out"] / "aggregate.html").read_text()
    page = _Page(text)
    assert page.images == [f"data:image/png;base64,{study['png']}"]
    assert "Aggregate of the test study" in text
    assert CODE_MARKER not in text
    assert "<script" not in text
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))]


@pytest.mark.parametrize("label", LABELS)
def test_every_verdict_label_has_its_own_colour(label):
    # A label whose class has no rule would be shown uncoloured beside coloured ones, as if it were neutral.
    assert f"td.verdict-{html_report._slug(label)}" in html_report._STYLE


def test_a_rebuild_drops_the_files_of_a_dataset_no_longer_in_the_study(study):
    _build(study)
    shutil.rmtree(study["runs"] / "beta-set")
    stats = json.loads(study["stats"].read_text())
    stats["results"] = [row for row in stats["results"] if row["dataset"] != "beta-set"]
    stats["claims"] = [row for row in stats["claims"] if row["dataset"] != "beta-set"]
    study["stats"].write_text(json.dumps(stats))
    _build(study)
    assert sorted(path.name for path in (study["out"] / "metrics").iterdir()) == ["alpha-set.json"]
    assert not (study["out"] / "curves" / "val_dice" / "beta-set.csv").exists()


def test_a_run_without_its_notebook_is_named(study):
    missing = study["notebooks"] / "beta-set" / "unetpp" / "seed1" / "train.ipynb"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing.parent)):
        _build(study)


def test_malformed_inputs_are_named(study):
    metrics_path = study["runs"] / "alpha-set" / "unet" / "seed0" / "metrics.json"
    metrics_path.write_text(json.dumps({"dataset": "alpha-set", "model": "unet", "seed": 0}))
    with pytest.raises(ValueError, match=rf"{metrics_path}: missing or malformed field 'test'"):
        _build(study)
    study["stats"].write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match=rf"{study['stats']}: no 'claims' list"):
        _build(study)


def test_command_line_reports_an_error_in_one_line(study, capsys):
    study["stats"].unlink()
    args = [f"--{key}={study[key]}" for key in ("aggregate", "stats", "runs", "notebooks", "out")]
    assert html_report.main(args) == 1
    err = capsys.readouterr().err
    assert err == f"error: {study['stats']}: not found (run the aggregate stage first)\n"


def test_command_line_defaults_to_the_study_of_params_scale(study, tmp_path, monkeypatch):
    """Without paths, the report is built from results/<scale>/ of params.yaml's scale, into its report/ folder,
    as dvc.yaml's report stage does; --study names another study's folder."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"scale": "smoke"}))
    monkeypatch.setattr(html_report, "PARAMS_FILE", params)
    monkeypatch.chdir(tmp_path)
    assert html_report.main([]) == 0
    assert (tmp_path / "results/smoke/report/index.html").is_file()
    params.write_text(yaml.safe_dump({"scale": "cpu"}))
    assert html_report.main([]) == 1  # no study at scale cpu here
    assert html_report.main(["--study", "results/smoke", "--out", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere/index.html").is_file()


def _dvc_workspace(tmp_path: Path, results: Path) -> tuple[Path, str]:
    """A DVC repository of dvc.yaml, params.yaml and the plot template, with the study in ``results`` laid out where
    the pipeline writes at params.yaml's scale (results/<scale>/): its figures, and its report built here from its
    runs and stats.json. Returns the repository and the study's folder in it."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    study = f"results/{yaml.safe_load((ROOT / 'params.yaml').read_text())['scale']}"
    shutil.copytree(results / "figures", repo / study / "figures")
    names = ("aggregate.ipynb", "stats.json", "runs", "notebooks")
    html_report.build_report(*(results / name for name in names), repo / study / "report")
    return repo, study


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dvc_shows_the_declared_metrics_and_plots(tmp_path):
    """dvc.yaml's top-level metrics and plots follow params.yaml's scale: with the archived study's figures and
    report where the pipeline writes them (results/<scale>/), one row per dataset with every run counted, the
    aggregate's figures, and per dataset two learning-curve plots, one line per variant with runs. The archived study
    ran fewer variants than params.yaml's grid, and a dataset of other variants (a volumetric one) is added: the plots
    must not need the grid's list."""
    runs = sorted(V1.glob("runs/*/*/seed*/metrics.json"))
    datasets = sorted({path.parts[-4] for path in runs})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params["study"]["models"]) - {path.parts[-3] for path in runs}, "the test needs a partial study"
    repo, study = _dvc_workspace(tmp_path, V1)
    volumes = "msd-task04-hippocampus"
    for quantity in html_report.CURVES:
        pd.DataFrame({"epoch": [1, 2, 1, 2], "model": ["unet3d"] * 2 + ["vnet"] * 2, quantity: [0.1, 0.2] * 2}).to_csv(
            repo / study / "report" / "curves" / quantity / f"{volumes}.csv", index=False
        )

    (workspace,) = json.loads(_dvc(repo, "metrics", "show", "--json")).values()
    metrics = workspace["data"]
    assert sorted(metrics) == [f"{study}/report/metrics/{dataset}.json" for dataset in datasets]
    for dataset in datasets:
        summary = metrics[f"{study}/report/metrics/{dataset}.json"]["data"]
        dataset_runs = [path for path in runs if path.parts[-4] == dataset]
        assert summary["runs"] == len(dataset_runs)
        assert summary["variants"] == len({path.parts[-3] for path in dataset_runs})

    plots = json.loads(_dvc(repo, "plots", "show", "--json", "-o", str(tmp_path / "dvc_plots")))["data"]
    figures = {path for path in plots if path.startswith(f"{study}/figures/")}
    # The whole folder is declared: everything in it must be an image, or DVC would try to plot it as data.
    assert figures == {f"{study}/figures/{path.name}" for path in (V1 / "figures").iterdir()}
    assert all(plots[path][0]["type"] == "image" for path in figures)
    for quantity in html_report.CURVES:
        for dataset in [*datasets, volumes]:
            curves = f"{study}/report/curves/{quantity}/{dataset}.csv"
            (plot,) = plots[curves]
            content = plot["content"]
            assert content["encoding"]["color"]["field"] == "model"
            assert content["encoding"]["y"]["field"] == quantity
            drawn = {row["model"] for row in content["data"]["values"]}
            assert drawn == set(pd.read_csv(repo / curves)["model"])


# The committed studies: the archived first version, and the current one at params.yaml's scale (the longest dataset
# name and the most variants and claims), where it has been run at this version of the training code.
CURRENT = ROOT / "results" / str(yaml.safe_load((ROOT / "params.yaml").read_text())["scale"])


@pytest.mark.parametrize("results", [V1, CURRENT], ids=["v1", "current"])
def test_dvc_metrics_show_fits_160_columns_one_row_per_dataset(tmp_path, results):
    if not (results / "stats.json").is_file():
        pytest.skip(f"{results} has not been aggregated at this version")
    repo, study = _dvc_workspace(tmp_path, results)
    lines = _dvc(repo, "metrics", "show").splitlines()
    datasets = sorted(path.name for path in (results / "runs").iterdir() if path.is_dir())
    assert [line.split()[0] for line in lines[1:]] == [f"{study}/report/metrics/{d}.json" for d in datasets]
    assert max(map(len, lines)) <= 160, "\n".join(lines)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install chromium): the report was not opened in a browser")


def _browser(*args: str) -> subprocess.CompletedProcess:
    # As root (CI containers) Chromium refuses to start without --no-sandbox; /dev/shm is small in containers.
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args]
    result = subprocess.run(command, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def test_report_of_the_archived_study_in_headless_chromium(tmp_path):
    """Built from the archived first version (results/v1) into a temporary folder, read back from Chromium's DOM:
    the verdict table holds every claim's verdict from stats.json, and every figure of the aggregate notebook is a
    decodable PNG."""
    out = tmp_path / "report"
    results = V1
    index = html_report.build_report(
        results / "aggregate.ipynb", results / "stats.json", results / "runs", results / "notebooks", out
    )

    page = _Page(_browser("--dump-dom", index.as_uri()).stdout.decode())
    claims = json.loads((results / "stats.json").read_text())["claims"]
    datasets = sorted({claim["dataset"] for claim in claims})
    assert page.verdict_rows[0] == ["claim", "statement", *datasets]
    # A claim restricted to some datasets (repro.analysis.claims: C1s, C2s) shows a dash elsewhere.
    # Each cell's first line is the label, the effect of each of its comparisons below it.
    labels = {
        (row[0], dataset): cell.split("\n")[0]
        for row in page.verdict_rows[1:]
        for dataset, cell in zip(datasets, row[2:], strict=True)
        if cell != "\N{EM DASH}"
    }
    assert labels == {(claim["claim_id"], claim["dataset"]): claim["verdict"] for claim in claims}
    runs = list((results / "runs").glob("*/*/seed*/metrics.json"))
    notebook_links = [link for link in page.links if link.endswith("train.ipynb")]
    assert len(notebook_links) == len(runs)
    assert all((index.parent / link).is_file() for link in notebook_links)

    aggregate = _Page(_browser("--dump-dom", (out / "aggregate.html").as_uri()).stdout.decode())
    notebook = nbformat.read(results / "aggregate.ipynb", as_version=4)
    n_figures = sum(
        "image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert n_figures > 0 and len(aggregate.images) == n_figures
    for src in aggregate.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and min(image.size) > 100

    screenshot = tmp_path / "index.png"
    _browser("--hide-scrollbars", "--window-size=1100,700", f"--screenshot={screenshot}", index.as_uri())
    with Image.open(screenshot) as image:
        # A blank page is one colour; the verdict table's coloured cells are several.
        assert image.size == (1100, 700) and len(image.convert("RGB").getcolors(maxcolors=1100 * 700)) > 3


def test_what_was_run_counts_each_dataset_as_it_ran_and_folds_the_commits():
    """A dataset that trained part of the grid (a user's own: one run) is counted as it ran, not as a product of the
    whole grid; the commits, one per committed batch of runs, are folded away."""
    rows = [
        {
            "dataset": "a",
            "model": model,
            "seed": seed,
            "scale": "cpu",
            "epochs": 35,
            "image_size": 96,
            "device": "cpu",
            "git_commit": f"{seed}" * 40,
            "training_code": "v1",
        }
        for model in ("unet", "unetpp")
        for seed in (0, 1, 2)
    ] + [
        {
            "dataset": "mine",
            "model": "unet",
            "seed": 0,
            "scale": "cpu",
            "epochs": 35,
            "image_size": 96,
            "device": "cpu",
            "git_commit": "9" * 40,
            "training_code": "v1",
        }
    ]
    text = html_report._what_was_run(pd.DataFrame(rows))
    assert "7 runs: a 6 (2 variants x seeds 0, 1, 2); mine 1 (1 variants x seeds 0)" in text
    assert "<details><summary>git commits recorded by the runs: 4</summary>" in text


def test_the_report_says_whether_the_runs_code_versions_are_one_code_in_numbers():
    from repro.analysis.html_report import equivalence_text

    log = [{"from_code": "a", "to_code": "b"}, {"from_code": "b", "to_code": "c"}]
    assert equivalence_text({"a", "c"}, log).startswith("number-equivalent: every version above is c or linked")
    assert equivalence_text({"a", "x"}, log) == "not linked to c by results/provenance.csv (other numbers possible): x"
    assert "must share one" in equivalence_text({"a"}, [])

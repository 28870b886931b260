"""Build the study's HTML report and the summary files DVC reads for `dvc metrics` and `dvc plots`.

Writes into one folder (``results/<scale>/report/`` in the pipeline):

- ``aggregate.html``: the executed aggregate notebook as HTML, code hidden, figures embedded as data URIs and
  no script loaded from the network, so it reads the same offline;
- ``index.html``: what was run, the verdict of every claim on every dataset with the effect it is read from, and a
  table of every run that links its executed notebook (kept as ``.ipynb``: converting hundreds of notebooks that
  embed their figures would double the repository's size for what Jupyter or GitHub already render);
- ``metrics/<dataset>.json``: a few headline numbers (runs, variants, the best mean test Dice and its variant, the
  claims confirmed, refuted, inconclusive and not run), one flat file per dataset so that ``dvc metrics show`` is one
  row per dataset, narrow enough for a terminal;
- ``curves/<quantity>/<dataset>.csv``: validation Dice and training loss per epoch and model variant (mean over
  seeds), one row each (columns ``epoch, model, <quantity>``), for ``dvc plots``. Long, not one column per
  variant: dvc.yaml then names no variant, so the plots draw a partial study, and a dataset whose variants differ
  from the grid's (Hippocampus' volumetric networks); ``.dvc/plots/curves_by_model.json`` colours by model.

``python -m repro.analysis.html_report --help`` lists the inputs; the defaults are the pipeline's paths at params.yaml's
scale (``results/<scale>/``), or below ``--study`` (e.g. ``--study results/v1`` for the archived first version).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
from pathlib import Path

import jinja2
import nbformat
import pandas as pd
import yaml
from nbconvert import HTMLExporter

from repro.analysis import run_results, tables, verdicts
from repro.analysis.run_results import RUN_KEYS
from repro.config import PARAMS_FILE
from repro.provenance import equivalent_to, read_log

# nbconvert's lab template loads require.js, MathJax, Mermaid and the widget manager from a CDN. The aggregate
# notebook has no LaTeX, diagrams or widgets, so all four are dropped: the page needs nothing from the network.
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# The learning-curve quantities written for `dvc plots`, as named in each run's history.csv.
CURVES = ("val_dice", "train_loss")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
#runs td { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.verdict-reproduced, td.verdict-equivalent, td.verdict-non-inferior { background: #c8ecc8; }
td.verdict-reproduced-smaller-than-claimed { background: #e4f5d9; }
td.verdict-smaller-than-claimed { background: #fde2c4; }
td.verdict-reversed, td.verdict-not-equivalent, td.verdict-inferior { background: #f7d4d4; }
td.verdict-inconclusive { background: #fff1c7; }
td.verdict-inconclusive-underpowered { background: #f4f0e0; }
td.verdict-not-run, td.not-tested { color: #888; }
td div.effect { font-size: 0.85em; color: #444; font-variant-numeric: tabular-nums; }
td div.effect + div.effect { margin-top: 0.3em; }
td div.effect span.n { white-space: nowrap; }
"""


def export_notebook_html(notebook: Path) -> str:
    """The executed notebook as a standalone HTML page without code cells' inputs or prompts.

    Args:
        notebook: an executed ``.ipynb``.

    Returns:
        The HTML text: CSS inline, images as data URIs, no ``<script src=...>``.
    """
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: no executed notebook to convert (run the aggregate stage first)")
    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"offline.html.j2": _OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"path": str(notebook.parent), "name": notebook.stem}}
    )
    return body


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the aggregate stage first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def runs_with_notebooks(runs_dir: Path, notebooks_dir: Path) -> pd.DataFrame:
    """The report's table of runs: one row per finished run, read by :func:`repro.analysis.run_results.load_runs` (the
    one reader of runs) and narrowed to its keys, test scores, device, commit and training code version, with the paths
    of its executed notebook and history added.

    Args:
        runs_dir: ``results/<scale>/runs``, holding ``<dataset>/<model>/seed<k>/metrics.json``.
        notebooks_dir: ``results/<scale>/notebooks``, holding ``<dataset>/<model>/seed<k>/train.ipynb`` (or
            ``nnunet.ipynb``).
    """
    columns = [*RUN_KEYS, "dice", "iou", "scale", "epochs", "image_size", "device", "train_seconds", "git_commit"]
    runs = run_results.load_runs(runs_dir).per_seed[[*columns, "training_code"]].copy()
    runs[["device", "git_commit"]] = runs[["device", "git_commit"]].fillna("unknown")
    runs["training_code"] = runs["training_code"].fillna("not recorded")
    folders = [Path(run.dataset, run.model, f"seed{run.seed}") for run in runs.itertuples()]
    runs["notebook"] = [_notebook(notebooks_dir / folder, runs_dir / folder) for folder in folders]
    runs["history"] = [runs_dir / folder / "history.csv" for folder in folders]
    return runs


def _notebook(folder: Path, run_dir: Path) -> Path:
    """The executed notebook of a run: train.ipynb, or the notebook of a run made by another system (nnunet.ipynb);
    for one domain of a universal model, the model's notebook in the folder of its domains joined by ``+``
    (``<domain>+<domain>/<model>/seed<k>/train_universal.ipynb``, as its metrics.json's ``domains`` give them)."""
    domains = _read_json(run_dir / "metrics.json").get("domains")
    if domains:
        folder = folder.parents[2] / "+".join(domains) / folder.parent.name / folder.name
    notebook = next(iter(sorted(folder.glob("*.ipynb"))), None)
    if notebook is None:
        raise FileNotFoundError(f"{folder}: the executed notebook of the run in {run_dir} is missing")
    return notebook


# What a stats.json written since the leave-one-seed-out analysis adds per claim × dataset (absent from older ones).
_OPTIONAL_CLAIM_FIELDS = ("loo_kept", "loo_cases")
# What a verdict cell prints of each comparison: tables.effect_text and tables.claimed_text read these.
_COMPARISON_FIELDS = (
    "claim_id",
    "dataset",
    "better",
    "baseline",
    "better_level",
    "baseline_level",
    "metric",
    "kind",
    "claimed_difference",
    "mean_diff",
    "ci_adj_low",
    "ci_adj_high",
    "tost_ci_low",
    "tost_ci_high",
    "verdict",
)


def _claims(stats: dict, stats_path: Path) -> pd.DataFrame:
    try:
        claims = pd.DataFrame(stats["claims"])
        claims = claims[["claim_id", "title", "dataset", "verdict"]].join(
            claims.reindex(columns=list(_OPTIONAL_CLAIM_FIELDS))
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"{stats_path}: no 'claims' list with claim_id, title, dataset, verdict ({error})") from None
    return claims


def _comparisons(stats: dict, stats_path: Path) -> pd.DataFrame:
    """stats.json's comparisons (one row per comparison × dataset), named ``better - baseline`` in ``comparison``."""
    try:
        comparisons = pd.DataFrame(stats["comparisons"])[list(_COMPARISON_FIELDS)]
    except (KeyError, TypeError) as error:
        fields = ", ".join(_COMPARISON_FIELDS)
        raise ValueError(f"{stats_path}: no 'comparisons' list with {fields} ({error})") from None
    return comparisons.assign(comparison=tables.comparison_names(comparisons))


def _margin(stats: dict, stats_path: Path) -> float:
    try:
        return float(stats["settings"]["tost_margin"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{stats_path}: no 'settings' with a numeric 'tost_margin' ({error})") from None


def _cell_means(stats: dict, stats_path: Path) -> pd.DataFrame:
    try:
        return pd.DataFrame(stats["results"])[["dataset", "model", "dice_mean"]]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{stats_path}: no 'results' list with dataset, model, dice_mean ({error})") from None


def metrics_summaries(runs: pd.DataFrame, claims: pd.DataFrame, cells: pd.DataFrame) -> dict[str, dict]:
    """Per dataset, a few headline numbers: the runs and variants trained, the variant of the best mean test Dice and
    that Dice, and the claims counted by what their verdicts say (``verdicts.OUTCOMES``: confirmed, refuted,
    inconclusive, not run).

    Flat, few and short on purpose: `dvc metrics show` prints every key of every file as a column, one row per file,
    and must fit a terminal (tests/test_html_report.py holds it to 160 columns). Each variant's scores and each claim's
    verdict are in the aggregate's tables and this report's pages.
    """
    summaries = {}
    for dataset, on_dataset in runs.groupby("dataset"):
        dice = cells[cells["dataset"] == dataset].set_index("model")["dice_mean"]
        labels = claims.loc[claims["dataset"] == dataset, "verdict"]
        summaries[dataset] = {
            "runs": len(on_dataset),
            "variants": int(on_dataset["model"].nunique()),
            "best": str(dice.idxmax()),
            "best_dice": float(dice.max()),
        } | {outcome: int(labels.isin(said).sum()) for outcome, said in verdicts.OUTCOMES.items()}
    return summaries


def mean_learning_curves(runs: pd.DataFrame, quantity: str) -> dict[str, pd.DataFrame]:
    """Per dataset: ``quantity`` per epoch and model variant, averaged over its seeds; columns ``epoch, model,
    <quantity>``, sorted by model, then epoch."""
    histories = []
    for run in runs.itertuples():
        if not run.history.is_file():
            raise FileNotFoundError(f"{run.history}: the run's per-epoch history is missing")
        history = pd.read_csv(run.history)
        if "epoch" not in history or quantity not in history:
            raise ValueError(f"{run.history}: needs the columns 'epoch' and '{quantity}'")
        histories.append(history[["epoch", quantity]].assign(dataset=run.dataset, model=run.model))
    curves = pd.concat(histories, ignore_index=True)
    return {
        dataset: group.groupby(["model", "epoch"], as_index=False)[quantity].mean()[["epoch", "model", quantity]]
        for dataset, group in curves.groupby("dataset")
    }


def _slug(label: str) -> str:
    """A verdict label as a CSS class name: "reproduced, smaller than claimed" -> "reproduced-smaller-than-claimed"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _whole(text: str) -> str:
    """``text`` escaped, kept on one line where a narrow cell wraps (a difference with its interval, a claim)."""
    return f'<span class="n">{html.escape(text)}</span>'


def _effect_lines(comparisons: pd.DataFrame, margin: float) -> str:
    """Under a verdict, the effect each of its comparisons measured: metric, mean difference with the interval its
    label is read from, and what was claimed, formatted as the README's effects table formats them. A claim of several
    comparisons (C6's three networks, C7's two steps) names each with its own label, one that did not run included;
    where none ran there is nothing to show."""
    ran = comparisons["mean_diff"].notna()
    if not ran.any():
        return ""
    lines = []
    for (_, row), has_effect in zip(comparisons.iterrows(), ran, strict=True):
        parts = [html.escape(f"{row['comparison']}: {row['verdict']}")] if len(comparisons) > 1 else []
        if has_effect:
            effect, claimed = _whole(tables.effect_text(row)), _whole(tables.claimed_text(row, margin))
            parts.append(f"{html.escape(row['metric'])} {effect} vs claimed {claimed}")
        lines.append(f'<div class="effect">{", ".join(parts)}</div>')
    return "".join(lines)


def _verdict_cell(cell: pd.Series, comparisons: pd.DataFrame, margin: float) -> str:
    verdict = cell["verdict"]
    # "(fragile: k/n)" where stats.json has the leave-one-seed-out analysis and leaving one seed out changes the label.
    text = html.escape(tables.marked_verdict(verdict, cell["loo_kept"], cell["loo_cases"]))
    return f'<td class="verdict-{_slug(verdict)}">{text}{_effect_lines(comparisons, margin)}</td>'


def _verdict_table(claims: pd.DataFrame, comparisons: pd.DataFrame, margin: float) -> str:
    datasets = sorted(claims["dataset"].unique())
    titles = claims.drop_duplicates("claim_id").set_index("claim_id")["title"]
    by_cell = claims.set_index(["claim_id", "dataset"])
    compared = dict(list(comparisons.groupby(["claim_id", "dataset"], sort=False)))
    head = "".join(f"<th>{html.escape(d)}</th>" for d in datasets)
    rows = []
    for claim_id, title in titles.items():
        cells = []
        for dataset in datasets:
            if (claim_id, dataset) not in by_cell.index:
                # a claim restricted to other datasets (e.g. a sensitivity analysis on DSB2018)
                cells.append('<td class="not-tested" title="not a dataset of this claim">&mdash;</td>')
                continue
            # Every claim × dataset of stats.json is the verdict of its comparisons there.
            cells.append(_verdict_cell(by_cell.loc[(claim_id, dataset)], compared[(claim_id, dataset)], margin))
        rows.append(
            f'<tr data-claim="{html.escape(claim_id)}"><td>{html.escape(claim_id)}</td>'
            f"<td>{html.escape(title)}</td>{''.join(cells)}</tr>"
        )
    return (
        f'<table id="verdicts"><thead><tr><th>claim</th><th>statement</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _runs_table(runs: pd.DataFrame, out_dir: Path) -> str:
    rows = []
    for run in runs.itertuples():
        link = Path(os.path.relpath(run.notebook, out_dir)).as_posix()
        rows.append(
            f"<tr><td>{html.escape(run.dataset)}</td><td>{html.escape(run.model)}</td>"
            f'<td class="num">{run.seed}</td><td class="num">{run.dice:.3f}</td><td class="num">{run.iou:.3f}</td>'
            f'<td class="num">{run.train_seconds:,.0f}</td><td>{html.escape(run.device)}</td>'
            f'<td><a href="{html.escape(link)}" title="{html.escape(link)}">train.ipynb</a></td></tr>'
        )
    return (
        '<table id="runs"><thead><tr><th>dataset</th><th>model</th><th>seed</th><th>test Dice</th>'
        "<th>test IoU</th><th>training (s)</th><th>device</th><th>executed notebook</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _short_commit(commit: str) -> str:
    """``bbe82b7bd1af...+dirty`` -> ``bbe82b7+dirty``: the abbreviation git itself prints."""
    sha, plus, suffix = commit.partition("+")
    return sha[:7] + plus + suffix


def _what_was_run(runs: pd.DataFrame) -> str:
    def listed(column: str) -> str:
        return ", ".join(html.escape(str(value)) for value in sorted(runs[column].unique()))

    # Runs per dataset, each with its own variants and seeds: a dataset that trains part of the grid (a user's
    # own, or rows added to some datasets only) is counted as it is, not as a product of the whole grid.
    per_dataset = [
        f"{html.escape(dataset)} {len(group)} ({group['model'].nunique()} variants x seeds "
        f"{', '.join(map(str, sorted(group['seed'].unique())))})"
        for dataset, group in runs.groupby("dataset")
    ]
    commits = runs["git_commit"].value_counts()
    items = [
        f"{len(runs)} runs: " + "; ".join(per_dataset),
        f"variants: {listed('model')}",
        f"scale {listed('scale')}; {listed('epochs')} epochs; images {listed('image_size')} px",
        f"devices: {listed('device')}",
        # Commits move on while a grid trains (one per committed batch of runs): folded, the line below says what
        # makes runs comparable.
        f"<details><summary>git commits recorded by the runs: {len(commits)}</summary>"
        + ", ".join(f"{html.escape(_short_commit(commit))} ({count})" for commit, count in sorted(commits.items()))
        + "</details>",
        # Commits move on while a grid trains; what makes runs comparable is the training code they ran.
        "training code versions (md5 of the train stage's code files, "
        "repro.analysis.run_results.training_code_version): "
        + ", ".join(f"{html.escape(code)} ({n})" for code, n in sorted(runs["training_code"].value_counts().items())),
        html.escape(equivalence_text(set(runs["training_code"]), read_log())),
    ]
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def equivalence_text(versions: set[str], log: list[dict[str, str]]) -> str:
    """Whether the runs' training-code versions are one code's, in numbers: the latest version the provenance log
    records and every version its proven changes link to it (``repro.provenance``)."""
    if not log:
        return "provenance log: no recorded change, so every run above must share one training-code version"
    latest = log[-1]["to_code"]
    outside = sorted(versions - equivalent_to(latest, log))
    if outside:
        return f"not linked to {latest} by results/provenance.csv (other numbers possible): {', '.join(outside)}"
    return (
        f"number-equivalent: every version above is {latest} or linked to it by changes proven to alter no number "
        f"({len(log)} in results/provenance.csv)"
    )


def index_html(
    runs: pd.DataFrame,
    claims: pd.DataFrame,
    comparisons: pd.DataFrame,
    margin: float,
    out_dir: Path,
    aggregate_name: str,
) -> str:
    """The report's entry page: what was run, the verdict table with each verdict's effect (``comparisons``; ``margin``:
    the equivalence and non-inferiority margin), and every run linked to its notebook."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>unet-repro: study report</title><style>{_STYLE}</style></head>
<body>
<h1>unet-repro: study report</h1>
{_what_was_run(runs)}
<p>Tables, every paired test and the figures: <a href="{aggregate_name}">the aggregate notebook</a>
(how each verdict follows from the tests is stated there).</p>
<h2>Verdict per claim and dataset</h2>
<p>Under each label, the effect it is read from: the mean paired difference (better &minus; baseline, in the claim's
metric) with the interval the label is read from (the family's, at alpha/m; for an equivalence claim the TOST's own,
1 &minus; 2 alpha), then what was claimed (the paper's difference, &gt; 0 where it gives none, or the margin).</p>
{_verdict_table(claims, comparisons, margin)}
<h2>Runs</h2>
<p>Each run's executed notebook (learning curves, test cases, scores) opens in Jupyter or on GitHub.</p>
{_runs_table(runs, out_dir)}
</body>
</html>
"""


def build_report(aggregate: Path, stats_path: Path, runs_dir: Path, notebooks_dir: Path, out_dir: Path) -> Path:
    """Write the report, the metrics summaries and the learning curves into ``out_dir``; return index.html."""
    stats = _read_json(stats_path)
    claims = _claims(stats, stats_path)
    comparisons, margin = _comparisons(stats, stats_path), _margin(stats, stats_path)
    runs = runs_with_notebooks(runs_dir, notebooks_dir)
    aggregate_html = export_notebook_html(aggregate)

    out_dir.mkdir(parents=True, exist_ok=True)
    # Files of datasets no longer in the study must not linger when the folder is rebuilt by hand.
    for stale in [*out_dir.glob("metrics/*.json"), *out_dir.glob("curves/*/*.csv")]:
        stale.unlink()
    (out_dir / "aggregate.html").write_text(aggregate_html)
    for dataset, summary in metrics_summaries(runs, claims, _cell_means(stats, stats_path)).items():
        path = out_dir / "metrics" / f"{dataset}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
    for quantity in CURVES:
        for dataset, table in mean_learning_curves(runs, quantity).items():
            path = out_dir / "curves" / quantity / f"{dataset}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False, float_format="%.5f")
    index = out_dir / "index.html"
    index.write_text(index_html(runs, claims, comparisons, margin, out_dir, "aggregate.html"))
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.analysis.html_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, help="the study's folder (default: results/<scale of params.yaml>)")
    # Each input's name below the study's folder, then the output's, in build_report's order.
    names = {
        "aggregate": "aggregate.ipynb",
        "stats": "stats.json",
        "runs": "runs",
        "notebooks": "notebooks",
        "out": "report",
    }
    for option, name in names.items():
        parser.add_argument(f"--{option}", type=Path, help=f"default: <study>/{name}")
    args = parser.parse_args(argv)
    try:
        study = args.study or Path("results") / str(yaml.safe_load(PARAMS_FILE.read_text())["scale"])
        paths = [getattr(args, option) or study / name for option, name in names.items()]
        index = build_report(*paths)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

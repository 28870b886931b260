"""Read the training runs' outputs and flag the runs that failed to train.

Reads what the training stage writes under ``results/<scale>/runs/<dataset>/<model>/seed<k>/`` (``metrics.json``,
``per_image.csv`` and ``history.csv``); never imports torch, so it runs on an analysis-only environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repro.provenance import training_code_version

RUN_KEYS = ["dataset", "model", "seed"]
# Run-level fields copied from metrics.json next to the flattened test metrics.
RUN_FIELDS = (
    "arch",
    "scale",
    "image_size",
    "epochs",
    "best_epoch",
    "params",
    "flops",
    "train_seconds",
    "images_per_second",
    "device",
    "git_commit",
)
# A run failed when its best validation Dice is below this fraction of the median best validation Dice of the
# other seeds of its cell: it did not learn what the same recipe learns with other seeds.
FAILED_FRACTION = 0.5


@dataclass(frozen=True)
class RunResults:
    """Tidy results of all runs.

    Attributes:
        per_seed: one row per dataset × model × seed: ``RUN_KEYS``, ``RUN_FIELDS``, ``training_code``
            (:func:`training_code_version`), the test metrics
            (``dice``, ``iou``, ``miou_bg``, ``dice_pooled``, ``iou_pooled``), ``dice_<class>`` and
            ``iou_<class>`` per foreground class, ``pruned_<level>_<metric>`` for deep-supervision runs
            evaluated at pruned depths, and ``best_val_dice`` (the best epoch of ``history.csv``).
        per_image: one row per dataset × model × seed × test image: ``RUN_KEYS``, ``id`` and the
            columns of ``per_image.csv``.
    """

    per_seed: pd.DataFrame
    per_image: pd.DataFrame

    def without(self, runs: pd.DataFrame) -> RunResults:
        """The same results without some runs.

        Args:
            runs: a table with ``RUN_KEYS`` columns naming the runs to leave out.

        Returns:
            A new ``RunResults``.
        """
        keys = set(runs[RUN_KEYS].itertuples(index=False, name=None))

        def keep(df: pd.DataFrame) -> pd.DataFrame:
            dropped = [key in keys for key in df[RUN_KEYS].itertuples(index=False, name=None)]
            return df[~pd.Series(dropped, index=df.index, dtype=bool)].reset_index(drop=True)

        return RunResults(per_seed=keep(self.per_seed), per_image=keep(self.per_image))


def _flatten_test_metrics(test: dict, test_pruned: dict) -> dict[str, float]:
    """Flatten the nested test metrics of one run into scalar columns.

    Args:
        test: ``metrics.json["test"]``.
        test_pruned: ``metrics.json["test_pruned"]`` (empty when the run has no pruned evaluation).

    Returns:
        Column name to value.
    """
    flat = {name: value for name, value in test.items() if name != "per_class"}
    for class_name, class_metrics in test.get("per_class", {}).items():
        flat.update({f"{metric}_{class_name}": value for metric, value in class_metrics.items()})
    for level, level_metrics in test_pruned.items():
        flat.update(
            {f"pruned_{level}_{metric}": value for metric, value in level_metrics.items() if metric != "per_class"}
        )
    return flat


def best_val_dice(history_path: Path) -> float:
    """Best validation Dice over the epochs of a run's ``history.csv``.

    Args:
        history_path: the run's ``history.csv``.

    Returns:
        The largest ``val_dice``.
    """
    history = pd.read_csv(history_path)
    if "val_dice" not in history.columns or history["val_dice"].dropna().empty:
        raise ValueError(f"{history_path}: no val_dice values to judge the run by")
    return float(history["val_dice"].max())


@contextmanager
def naming_the_metrics_file(metrics_path: Path) -> Iterator[None]:
    """Reading ``metrics_path`` inside this block: a file that is not JSON, or a field that is missing or malformed,
    raises ``ValueError`` naming the file (and the field), not a bare ``KeyError`` from somewhere in a table."""
    try:
        yield
    except json.JSONDecodeError as error:
        raise ValueError(f"{metrics_path}: not valid JSON ({error})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{metrics_path}: missing or malformed field {error}") from None


def load_runs(runs_dir: str | Path) -> RunResults:
    """Read every ``<dataset>/<model>/seed<k>/`` run under ``runs_dir``.

    Args:
        runs_dir: the runs root, e.g. ``results/cpu/runs``.

    Returns:
        The per-seed and per-image tables, sorted by dataset, model, seed (and image id).

    Raises:
        ValueError: a ``metrics.json`` that is not JSON, lacks a field or lies in another run's folder (named).
    """
    runs_dir = Path(runs_dir)
    metric_files = sorted(runs_dir.glob("*/*/seed*/metrics.json"))
    if not metric_files:
        raise FileNotFoundError(f"no <dataset>/<model>/seed<k>/metrics.json under {runs_dir}")
    seed_rows, image_tables = [], []
    for metrics_path in metric_files:
        with naming_the_metrics_file(metrics_path):
            metrics = json.loads(metrics_path.read_text())
            keys = {"dataset": metrics["dataset"], "model": metrics["model"], "seed": int(metrics["seed"])}
            test = _flatten_test_metrics(metrics["test"], metrics.get("test_pruned", {}))
        run_dir = metrics_path.parent
        # A run copied to the wrong folder would silently pair with the wrong variant.
        expected_dir = (keys["dataset"], keys["model"], f"seed{keys['seed']}")
        if (run_dir.parent.parent.name, run_dir.parent.name, run_dir.name) != expected_dir:
            raise ValueError(f"{metrics_path} describes {expected_dir}, which does not match its folder")
        run_fields = {field: metrics.get(field) for field in RUN_FIELDS}
        run_fields["training_code"] = training_code_version(metrics.get("code_files"))
        if isinstance(run_fields["image_size"], list):  # a volume's (D, H, W)
            run_fields["image_size"] = "x".join(map(str, run_fields["image_size"]))
        history = {"best_val_dice": best_val_dice(run_dir / "history.csv")}
        seed_rows.append(keys | run_fields | test | history)
        images = pd.read_csv(run_dir / "per_image.csv", dtype={"id": str})
        image_tables.append(images.assign(**keys)[[*RUN_KEYS, *images.columns]])
    per_seed = pd.DataFrame(seed_rows).sort_values(RUN_KEYS, ignore_index=True)
    per_image = pd.concat(image_tables, ignore_index=True).sort_values([*RUN_KEYS, "id"], ignore_index=True)
    return RunResults(per_seed=per_seed, per_image=per_image)


def failed_runs(per_seed: pd.DataFrame, fraction: float = FAILED_FRACTION) -> pd.DataFrame:
    """The runs that failed to train, judged by their own validation history.

    A run failed when its best validation Dice is below ``fraction`` times the median best validation Dice of
    the other seeds of its cell (same dataset and model variant). A cell with a single seed has nothing to
    compare with, so its run never counts as failed. The test scores play no part.

    Args:
        per_seed: ``RunResults.per_seed``.
        fraction: the threshold as a fraction of the other seeds' median.

    Returns:
        One row per failed run: ``RUN_KEYS``, ``best_val_dice``, ``others_median`` (the median it was
        compared with), ``threshold`` and the run's test ``dice``.
    """
    rows = []
    for (dataset, model), cell in per_seed.groupby(["dataset", "model"], sort=True):
        for index, run in cell.iterrows():
            others = cell.drop(index)["best_val_dice"]
            if others.empty:
                continue
            median = float(others.median())
            if run["best_val_dice"] < fraction * median:
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "seed": int(run["seed"]),
                        "best_val_dice": float(run["best_val_dice"]),
                        "others_median": median,
                        "threshold": fraction * median,
                        "dice": float(run["dice"]),
                    }
                )
    columns = [*RUN_KEYS, "best_val_dice", "others_median", "threshold", "dice"]
    return pd.DataFrame(rows, columns=columns).astype({"seed": "int64"})

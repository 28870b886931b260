"""The study grid of params.yaml (datasets x model variants x seeds at a scale), checked whole before any run.

A misspelled dataset or variant otherwise surfaces only when its run starts, possibly hours into a study and
after other runs have used the machine. :func:`check_grid` finds every such problem at once, so one message lists
them all.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from repro.config import model_variant, scale_preset
from repro.data.registry import get_dataset, list_datasets


class GridError(ValueError):
    """The study grid in params.yaml cannot run; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"  - {problem}" for problem in problems))


@dataclass(frozen=True)
class Grid:
    """The study grid: every (dataset, model variant, seed) at one scale."""

    scale: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.datasets) * len(self.models) * len(self.seeds)

    @property
    def results_dir(self) -> str:
        """Where dvc.yaml's stages write this scale's study (runs, notebooks, aggregate, report), repo-relative."""
        return f"results/{self.scale}"

    def describe(self) -> str:
        return (
            f"{len(self.datasets)} dataset(s) x {len(self.models)} variant(s) x {len(self.seeds)} seed(s) = "
            f"{self.size} runs at scale {self.scale}"
        )


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _names(study: dict, key: str, problems: list[str]) -> list:
    values = study.get(key)
    if not isinstance(values, list) or not values:
        problems.append(f"study.{key} must be a non-empty list; got {values!r}")
        return []
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        problems.append(f"study.{key} lists {duplicates} more than once")
    return values


def check_grid(params: dict[str, Any]) -> Grid:
    """The grid of ``params`` (as returned by :func:`repro.config.load_params`), or :class:`GridError` listing
    every problem: unknown scale or invalid preset, datasets that are not registered or not prepared, unknown
    model variants, variants whose arch or options ``repro.models.create_model`` refuses, and invalid seeds."""
    problems: list[str] = []
    try:
        preset = scale_preset(params.get("scale"), params)
    except (KeyError, TypeError, ValueError) as error:
        problems.append(f"scale: {error}")
        preset = None

    study = params.get("study")
    if not isinstance(study, dict):
        raise GridError([f"params.yaml has no 'study' section with datasets, models and seeds; got {study!r}"])
    datasets = _names(study, "datasets", problems)
    models = _names(study, "models", problems)
    seeds = _names(study, "seeds", problems)

    registered = list_datasets()
    prepare = params.get("prepare") or {}
    listed = prepare.get("datasets") or []
    custom = prepare.get("custom_datasets") or {}
    problems += [
        f"prepare.datasets: '{name}' is also in prepare.custom_datasets, whose own stage prepares it; list it once"
        for name in listed
        if name in custom
    ]
    shapes = set()
    for name in datasets:
        if name not in registered:
            problems.append(
                f"study.datasets: unknown dataset '{name}'; {_suggest(name, registered)}"
                f"registered: {', '.join(registered)} (add your own under prepare.custom_datasets)"
            )
            continue
        if name not in listed and name not in custom:
            problems.append(
                f"study.datasets: '{name}' is neither in prepare.datasets nor in prepare.custom_datasets, so no "
                "stage prepares it"
            )
        spec = get_dataset(name)
        shapes.add((spec.in_channels, 1 if spec.num_classes == 2 else spec.num_classes))

    variants = list(params.get("models") or {})
    for name in models:
        if name not in variants:
            problems.append(
                f"study.models: unknown model variant '{name}'; {_suggest(name, variants)}"
                f"params.yaml's models define: {', '.join(variants)}"
            )
            continue
        try:
            variant = model_variant(name, params)
        except ValueError as error:
            problems.append(str(error))
            continue
        width = {"width_mult": preset.width_mult} if preset else {}
        for in_channels, num_classes in sorted(shapes) or [(3, 1)]:
            error = _build_error(variant.arch, in_channels, num_classes, {**width, **variant.options})
            if error:
                problems.append(f"models.{name} ({variant.arch} {variant.options}): {error}")
                break

    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            problems.append(f"study.seeds: {seed!r} is not a whole number from 0 to 2**32 - 1")

    if problems:
        raise GridError(problems)
    return Grid(preset.name, tuple(datasets), tuple(models), tuple(seeds))


def _build_error(arch: str, in_channels: int, num_classes: int, options: dict) -> str | None:
    """Why ``create_model`` refuses these arguments, or None. Built on PyTorch's meta device: no memory is
    allocated, so even the paper-scale networks are checked in milliseconds."""
    import torch

    from repro.models import create_model

    try:
        with torch.device("meta"):
            create_model(arch, in_channels=in_channels, num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:
        return str(error)
    return None

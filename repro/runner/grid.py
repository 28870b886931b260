"""The study grid of params.yaml (datasets x model variants x seeds at a scale), checked whole before any run.

Eight blocks, each a DVC stage over its own datasets x variants. Seven share the study's seeds (``study.seeds``):

- the image study, ``study.datasets`` x ``study.models`` (stage ``train``);
- its extra rows, ``study.extra.datasets`` x ``study.extra.models`` (stage ``train_extra``): variants the study
  trains on some of its datasets only, where a budget does not cover every dataset;
- its ablations, ``study.ablations.datasets`` x ``study.ablations.models`` (stage ``train_ablations``): a paper's
  ablation run on the kind of data the paper ran it on (TinyU-Net's N on CT);
- its controls, ``study.controls.datasets`` x ``study.controls.models`` (stage ``train_controls``): a claim's control
  network on the datasets its budget covers (C4a's TinyU-Net with plain blocks on CT and PH2);
- the volumetric rows, ``study.volumes.datasets`` x ``study.volumes.models`` (stage ``train_volumes``), since a 2D
  network cannot train on a volume nor a 3D one on an image;
- the universal models' independent models, ``study.universal.domains`` x ``study.universal.independent`` (stage
  ``train_independent``): 3D networks trained alone on each domain, which the universal models are compared with.
  A block of its own, so that they may run on a domain the volumetric rows leave out;
- the universal models, ``study.universal.models`` (stage ``train_universal``): one network per variant and seed,
  trained on the two datasets of ``study.universal.domains`` together. Such a run's "dataset" is the domains joined
  by ``+`` (``repro.training.run.DOMAIN_SEPARATOR``), and it writes a record under each domain: no folder of runs/
  bears the joined name, only its executed notebook's (:func:`record_paths`, :func:`notebook_path`).

One has seeds of its own:

- nnU-Net on MSD Hippocampus (stage ``nnunet``, ``notebooks/nnunet.ipynb``): one run per seed of ``nnunet.seeds``,
  named ``nnunet@<seed>``. Its dataset is ``msd-task04-hippocampus`` and its model ``nnunet``, as its record says
  (``runs/msd-task04-hippocampus/nnunet/seed<k>/``); its executed notebook is ``nnunet.ipynb``. Within a seed it
  trains after the volumetric rows, which C14 compares it with.

The runner goes seed by seed over every seed of either list (``study.seeds`` in their order, then the seeds only
``nnunet.seeds`` lists); within a seed, each block that has that seed, in the order of :data:`GRID_STAGES`.

Two blocks may not train one variant on one dataset: both stages would write its run folder.

A misspelled dataset or variant otherwise surfaces only when its run starts, possibly hours into a study and
after other runs have used the machine. :func:`check_grid` finds every such problem at once, so one message lists
them all.

A :class:`RunFilter` aims a call of the runner at part of the grid (``--datasets``, ``--models``, ``--seeds``,
``--stages``): a run is selected when it matches every filter given; ``--datasets`` selects a universal run when it
names any of its domains. nnU-Net's runs are selected as any other: ``--models nnunet``, ``--datasets
msd-task04-hippocampus``, ``--stages 'nnunet@*'``.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro.config import dataset_training, model_variant, scale_preset
from repro.data.registry import get_dataset, list_datasets
from repro.runner.cluster import ParamsError

UNIVERSAL_STAGE = "train_universal"
# nnU-Net's stage (notebooks/nnunet.ipynb, code deps of its own), its dataset and the model its records name
# (repro.nnunet.STAGE and DATASET, without torch and nnU-Net).
NNUNET_STAGE = "nnunet"
NNUNET_DATASET = "msd-task04-hippocampus"
NNUNET_MODEL = "nnunet"
# The stage of every block of the grid, in the order a seed trains them: nnU-Net's after the volumetric rows, which
# C14 compares it with.
GRID_STAGES = (
    "train",
    "train_extra",
    "train_ablations",
    "train_controls",
    "train_volumes",
    NNUNET_STAGE,
    "train_independent",
    UNIVERSAL_STAGE,
)
# dvc.yaml's training stages: those that run the study's own training code (train.ipynb, train_universal.ipynb), one
# per block of the grid but nnU-Net's, with the train stage's code deps, in the order a seed trains them.
TRAIN_STAGES = tuple(stage for stage in GRID_STAGES if stage != NNUNET_STAGE)
# dvc.yaml's train_universal stage names its two domains (study.universal.domains[0] and [1]).
UNIVERSAL_DOMAINS = 2
# Joins a universal run's domains into its dataset name (repro.training.run.DOMAIN_SEPARATOR, without torch).
DOMAIN_SEPARATOR = "+"


@dataclass(frozen=True)
class Grid:
    """The study grid: every (dataset, model variant, seed) at one scale, images and volumes, and nnU-Net's runs
    (``nnunet_seeds``: params.yaml's ``nnunet.seeds``)."""

    scale: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    volume_datasets: tuple[str, ...] = ()
    volume_models: tuple[str, ...] = ()
    extra_datasets: tuple[str, ...] = ()
    extra_models: tuple[str, ...] = ()
    ablation_datasets: tuple[str, ...] = ()
    ablation_models: tuple[str, ...] = ()
    control_datasets: tuple[str, ...] = ()
    control_models: tuple[str, ...] = ()
    universal_domains: tuple[str, ...] = ()
    universal_models: tuple[str, ...] = ()
    independent_models: tuple[str, ...] = ()
    nnunet_seeds: tuple[int, ...] = ()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Grid:
        """The grid params.yaml describes (``scale``, ``study``, ``nnunet.seeds``), unchecked: :func:`check_grid`
        checks it first where runs are to start."""
        study = params["study"]

        def names(block: str, key: str) -> tuple:
            return tuple((study.get(block) or {}).get(key) or ())

        return cls(
            scale=str(params["scale"]),
            datasets=tuple(study["datasets"]),
            models=tuple(study["models"]),
            seeds=tuple(study["seeds"]),
            volume_datasets=names("volumes", "datasets"),
            volume_models=names("volumes", "models"),
            extra_datasets=names("extra", "datasets"),
            extra_models=names("extra", "models"),
            ablation_datasets=names("ablations", "datasets"),
            ablation_models=names("ablations", "models"),
            control_datasets=names("controls", "datasets"),
            control_models=names("controls", "models"),
            universal_domains=names("universal", "domains"),
            universal_models=names("universal", "models"),
            independent_models=names("universal", "independent"),
            nnunet_seeds=tuple((params.get("nnunet") or {}).get("seeds") or ()),
        )

    @property
    def size(self) -> int:
        return len(self.runs())

    @property
    def blocks(self) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        """(stage, datasets, models) of each block that has runs, in the order a seed trains them
        (:data:`GRID_STAGES`); nnU-Net's block only with seeds of its own."""
        universal = (DOMAIN_SEPARATOR.join(self.universal_domains),) if self.universal_domains else ()
        blocks = zip(
            GRID_STAGES,
            (
                self.datasets,
                self.extra_datasets,
                self.ablation_datasets,
                self.control_datasets,
                self.volume_datasets,
                (NNUNET_DATASET,) if self.nnunet_seeds else (),
                self.universal_domains,
                universal,
            ),
            (
                self.models,
                self.extra_models,
                self.ablation_models,
                self.control_models,
                self.volume_models,
                (NNUNET_MODEL,),
                self.independent_models,
                self.universal_models,
            ),
            strict=True,
        )
        return [block for block in blocks if block[1] and block[2]]

    def seeds_of(self, stage: str) -> tuple[int, ...]:
        """The seeds of a block: nnU-Net's own (``nnunet.seeds``), else the study's."""
        return self.nnunet_seeds if stage == NNUNET_STAGE else self.seeds

    def runs(self) -> list[tuple[str, str, str, int]]:
        """(stage, dataset, model, seed) of every run, in the order the runner trains them: seed by seed (the study's
        seeds in their order, then those only nnU-Net's list has); within a seed the image study, its extra rows, its
        ablations, its controls, the volumes, nnU-Net, the independent models, then the universal models, each block
        that has the seed, each variant in the order its list gives, then each dataset."""
        return [
            (stage, dataset, model, seed)
            for seed in dict.fromkeys((*self.seeds, *self.nnunet_seeds))
            for stage, datasets, models in self.blocks
            if seed in self.seeds_of(stage)
            for model in models
            for dataset in datasets
        ]

    @property
    def results_dir(self) -> str:
        """Where dvc.yaml's stages write this scale's study (runs, notebooks, aggregate, report), repo-relative."""
        return f"results/{self.scale}"

    def describe(self) -> str:
        labels = {stage: f"{stage.partition('_')[2]}: " if "_" in stage else "" for stage in TRAIN_STAGES}
        labels[NNUNET_STAGE] = f"{NNUNET_STAGE}: "
        text = " + ".join(
            f"{labels[stage]}{self._data_text(stage, datasets)} x {len(models)} variant(s) x "
            f"{len(self.seeds_of(stage))} seed(s)"
            for stage, datasets, models in self.blocks
        )
        return f"{text} = {self.size} runs at scale {self.scale}"

    def _data_text(self, stage: str, datasets: tuple[str, ...]) -> str:
        if stage == UNIVERSAL_STAGE:
            return f"{len(self.universal_domains)} domains together"
        return f"{len(datasets)} dataset(s)"


def domains_of(dataset: str) -> tuple[str, ...]:
    """The datasets a run of ``dataset`` trains on: a universal run's domains (its dataset is them joined by
    :data:`DOMAIN_SEPARATOR`, which no dataset's name holds), else the dataset alone."""
    return tuple(dataset.split(DOMAIN_SEPARATOR))


def record_paths(results_dir: str | Path, dataset: str, model: str, seed: int) -> list[Path]:
    """The records (metrics.json) a run writes below ``results_dir`` (``results/<scale>``, as a path to read):
    ``runs/<dataset>/<model>/seed<k>/metrics.json`` (an nnU-Net run's ``runs/msd-task04-hippocampus/nnunet/seed<k>/``),
    and a universal run's one under each of its domains (its joined name has no folder of runs). Each of a universal
    run's records holds the whole run's device and timings."""
    return [Path(results_dir, "runs", domain, model, f"seed{seed}", "metrics.json") for domain in domains_of(dataset)]


def run_of_record(path: Path, metrics: dict[str, Any]) -> tuple[str, str, str]:
    """(dataset, model, ``seed<k>``) of the run that wrote the record ``path`` (``runs/<dataset>/<model>/seed<k>/
    metrics.json``, read as ``metrics``), the inverse of :func:`record_paths`: a universal run's dataset is its
    domains joined by :data:`DOMAIN_SEPARATOR` (each of its records names them in ``domains``), so that its records,
    one under each domain, map to one run."""
    dataset, model, seed = path.parent.parent.parent.name, path.parent.parent.name, path.parent.name
    domains = metrics.get("domains")
    if isinstance(domains, list) and len(domains) > 1:
        dataset = DOMAIN_SEPARATOR.join(map(str, domains))
    return dataset, model, seed


def notebook_path(results_dir: str | Path, stage: str, dataset: str, model: str, seed: int) -> Path:
    """The executed notebook of a run below ``results_dir`` (dvc.yaml's commands):
    ``notebooks/<dataset>/<model>/seed<k>/train.ipynb``; a universal run's is ``train_universal.ipynb`` in the
    folder of its joined domains, an nnU-Net run's ``nnunet.ipynb``."""
    name = {UNIVERSAL_STAGE: "train_universal.ipynb", NNUNET_STAGE: "nnunet.ipynb"}.get(stage, "train.ipynb")
    return Path(results_dir, "notebooks", dataset, model, f"seed{seed}", name)


def run_name(stage: str, dataset: str, model: str, seed: int) -> str:
    """The DVC stage name of one run, e.g. ``train@ph2-dermoscopy-unet-0``; a universal run's names no dataset
    (its stage has one pair of domains): ``train_universal@u2net3d_universal-0``; an nnU-Net run's only its seed
    (its stage is a ``foreach`` over ``nnunet.seeds``): ``nnunet@0``."""
    if stage == NNUNET_STAGE:
        return f"{stage}@{seed}"
    if stage == UNIVERSAL_STAGE:
        return f"{stage}@{model}-{seed}"
    return f"{stage}@{dataset}-{model}-{seed}"


@dataclass(frozen=True)
class RunFilter:
    """Which runs of the grid one call trains: those matching every filter given (an empty filter matches all).

    ``datasets`` select a universal run (whose dataset is its domains joined by ``+``) when they name any of its
    domains, or the joined name. ``stages`` are shell-style globs over the runs' stage names (``train@ph2-*``,
    ``train_extra@*``, ``*-unetpp-*``, ``nnunet@*``); a run is selected when any of them matches its name.
    """

    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    stages: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.datasets or self.models or self.seeds or self.stages)

    @classmethod
    def parse(
        cls,
        datasets: str | None = None,
        models: str | None = None,
        seeds: str | None = None,
        stages: str | None = None,
        problems: list[str] | None = None,
    ) -> RunFilter:
        """The filter of the command line's comma-separated lists (``--datasets a,b --seeds 0,1``).

        Raises:
            ParamsError: a seed that is not a whole number; with a list ``problems``, added there instead (that seed
                left out), so that one message lists it with the others.
        """
        found = []
        seed_values = []
        for text in _items(seeds):
            try:
                seed_values.append(int(text))
            except ValueError:
                found.append(f"--seeds: '{text}' is not a whole number")
        if found and problems is None:
            raise ParamsError(found, "the command line")
        if problems is not None:
            problems += found
        return cls(_items(datasets), _items(models), tuple(seed_values), _items(stages))

    def matches(self, stage: str, dataset: str, model: str, seed: int) -> bool:
        return (
            (not self.datasets or any(name in self.datasets for name in (dataset, *domains_of(dataset))))
            and (not self.models or model in self.models)
            and (not self.seeds or seed in self.seeds)
            and (
                not self.stages
                or any(fnmatch.fnmatchcase(run_name(stage, dataset, model, seed), glob) for glob in self.stages)
            )
        )

    def select(self, grid: Grid) -> list[tuple[str, str, str, int]]:
        """The runs of ``grid`` (as :meth:`Grid.runs` gives them, in its order) that this filter selects."""
        return [run for run in grid.runs() if self.matches(*run)]

    def problems(self, grid: Grid) -> list[str]:
        """Every filter that names something outside ``grid`` (a typo would otherwise select nothing, silently),
        and filters that together select no run."""
        runs = grid.runs()
        problems = []
        for flag, values, known in (
            (
                "--datasets",
                self.datasets,
                {name for _, dataset, _, _ in runs for name in (dataset, *domains_of(dataset))},
            ),
            ("--models", self.models, {model for _, _, model, _ in runs}),
            ("--seeds", self.seeds, {seed for *_, seed in runs}),
        ):
            listed = [str(value) for value in sorted(known, key=str)]
            for value in values:
                if value not in known:
                    problems.append(
                        f"{flag}: '{value}' is not in the study grid of params.yaml; "
                        f"{_suggest(str(value), listed)}it has: {', '.join(listed)}"
                    )
        names = [run_name(*run) for run in runs]
        for glob in self.stages:
            if not fnmatch.filter(names, glob):
                problems.append(
                    f"--stages: '{glob}' matches no run of the study grid (names like {names[0]})"
                    if names
                    else f"--stages: '{glob}' matches no run: the grid has none"
                )
        if not problems and self and not self.select(grid):
            problems.append(f"{self.describe()} together select no run of the study grid")
        return problems

    def describe(self) -> str:
        """The filter as the command line gives it, e.g. ``--datasets ph2-dermoscopy --seeds 0``."""
        parts = [
            f"{flag} {','.join(map(str, values))}"
            for flag, values in (
                ("--datasets", self.datasets),
                ("--models", self.models),
                ("--seeds", self.seeds),
                ("--stages", self.stages),
            )
            if values
        ]
        return " ".join(parts)


def _items(text: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _names(study: dict, key: str, problems: list[str], empty: bool = False, where: str = "study") -> list:
    values = study.get(key)
    if not isinstance(values, list) or not (values or empty):
        problems.append(f"{where}.{key} must be a {'' if empty else 'non-empty '}list; got {values!r}")
        return []
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        problems.append(f"{where}.{key} lists {duplicates} more than once")
    return values


def check_grid(params: dict[str, Any]) -> Grid:
    """The grid of ``params`` (as returned by :func:`repro.config.load_params`), or
    :class:`~repro.runner.cluster.ParamsError` listing every problem: unknown scale or invalid preset, datasets that
    are not registered or not prepared, a volume dataset among the images or the reverse, unknown model variants,
    variants whose arch or options ``repro.models.create_model`` refuses (a 2D network among the volumes, for one), a
    variant two blocks would train on one dataset (two stages writing one run folder), and invalid seeds. Each problem
    is listed once, also where two blocks share it (the domains of the universal models and of their independent
    models). nnU-Net's block (``nnunet``) is checked as far as it can be without nnU-Net: its seeds, and with seeds its
    dataset (registered), the keys its stage reads and its entry for the scale (:func:`_nnunet_block`)."""
    problems: list[str] = []
    try:
        preset = scale_preset(params.get("scale"), params)
    except (KeyError, TypeError, ValueError) as error:
        problems.append(f"scale: {error}")
        preset = None

    study = params.get("study")
    if not isinstance(study, dict):
        raise ParamsError(
            [f"params.yaml has no 'study' section with datasets, models and seeds; got {study!r}"], "params.yaml"
        )
    seeds = _names(study, "seeds", problems)
    datasets = _names(study, "datasets", problems)
    models = _names(study, "models", problems)
    extra_datasets, extra_models = _sub_block(study, "extra", "extra rows", problems)
    ablation_datasets, ablation_models = _sub_block(study, "ablations", "ablations", problems)
    control_datasets, control_models = _sub_block(study, "controls", "controls", problems)
    volume_datasets, volume_models = _sub_block(study, "volumes", "volumetric rows", problems)
    prepare = params.get("prepare") or {}
    listed = prepare.get("datasets") or []
    custom = prepare.get("custom_datasets") or {}
    problems += [
        f"prepare.datasets: '{name}' is also in prepare.custom_datasets, whose own stage prepares it; list it once"
        for name in listed
        if name in custom
    ]
    width = {"width_mult": preset.width_mult} if preset else {}
    problems += _block_problems("study", datasets, models, 2, params, width)
    if extra_models:
        problems += _block_problems("study.extra", extra_datasets, extra_models, 2, params, width)
    if ablation_models:
        problems += _block_problems("study.ablations", ablation_datasets, ablation_models, 2, params, width)
    if control_models:
        problems += _block_problems("study.controls", control_datasets, control_models, 2, params, width)
    # The same run in two blocks would be two stages writing one output folder, which DVC refuses.
    image_blocks = {
        "study": (datasets, models),
        "study.extra": (extra_datasets, extra_models),
        "study.ablations": (ablation_datasets, ablation_models),
        "study.controls": (control_datasets, control_models),
    }
    names = list(image_blocks)
    problems += [
        f"{later}: '{model}' on '{dataset}' is already a run of {earlier}; list it once"
        for k, later in enumerate(names)
        for earlier in names[:k]
        for model in image_blocks[later][1]
        if model in image_blocks[earlier][1]
        for dataset in image_blocks[later][0]
        if dataset in image_blocks[earlier][0]
    ]
    if volume_models:
        problems += _block_problems("study.volumes", volume_datasets, volume_models, 3, params, width)
    universal_domains, universal_models, independent_models = _universal_block(study, problems)
    shared = [domain for domain in universal_domains if domain in volume_datasets]
    if independent_models:
        problems += _block_problems(
            "study.universal", universal_domains, independent_models, 3, params, width, models_key="independent"
        )
        # An independent model's run is a run of `train`'s command, as a volumetric row's is: one folder for both.
        problems += [
            f"study.universal.independent: '{model}' on '{dataset}' is already a run of study.volumes; list it once"
            for model in independent_models
            if model in volume_models
            for dataset in shared
        ]
        problems += [
            f"study.universal.independent: '{model}' is also in study.universal.models, whose runs of "
            f"{', '.join(universal_domains)} would share its folders; give the universal model its own variant name"
            for model in independent_models
            if model in universal_models
        ]
    if universal_models:
        problems += _block_problems(
            "study.universal", universal_domains, universal_models, 3, params, width | {"domains": UNIVERSAL_DOMAINS}
        )
        problems += [
            f"study.universal.models: '{model}' is also in study.volumes.models, whose runs of {', '.join(shared)} "
            "would share its folders; give the universal model its own variant name"
            for model in universal_models
            if model in volume_models and shared
        ]
    nnunet_seeds = _nnunet_block(params, preset.name if preset else None, problems)
    if nnunet_seeds:
        # nnU-Net's runs write runs/msd-task04-hippocampus/nnunet/seed<k>: no variant of that name may train there.
        problems += [
            f"{where}: '{NNUNET_MODEL}' on '{NNUNET_DATASET}' is a run of nnU-Net's stage (nnunet.seeds), which "
            "writes its folders; give the variant another name"
            for where, block_datasets, block_models in (
                ("study.volumes.models", volume_datasets, volume_models),
                ("study.universal.independent", universal_domains, independent_models),
                ("study.universal.models", universal_domains, universal_models),
            )
            if NNUNET_MODEL in block_models and NNUNET_DATASET in block_datasets
        ]

    for where, values in (("study.seeds", seeds), ("nnunet.seeds", nnunet_seeds)):
        for seed in values:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
                problems.append(f"{where}: {seed!r} is not a whole number from 0 to 2**32 - 1")

    if problems:
        raise ParamsError(list(dict.fromkeys(problems)), "params.yaml")
    return Grid.from_params(params)


def _nnunet_block(params: dict, scale: str | None, problems: list[str]) -> list:
    """The seeds of params.yaml's ``nnunet`` section (dvc.yaml's nnunet stage: one run per seed), and with seeds the
    problems that would otherwise stop its runs only once they start: a dataset that is not registered or that no
    stage prepares (its split), a key its stage reads that is missing, no entry for the scale (``scale``, None when
    the scale itself is unknown). Its trainer is checked where nnU-Net is imported (``repro.nnunet.load_settings``),
    when a run starts."""
    section = params.get("nnunet")
    if not isinstance(section, dict):
        problems.append(
            "params.yaml's nnunet must be a mapping with seeds, which dvc.yaml's nnunet stage reads (seeds: [] for no "
            f"nnU-Net run); got {section!r}"
        )
        return []
    seeds = _names(section, "seeds", problems, empty=True, where="nnunet")
    if not seeds:
        return seeds
    registered = list_datasets()
    if NNUNET_DATASET not in registered:
        problems.append(
            f"nnunet: its dataset '{NNUNET_DATASET}' is not registered (registered: {', '.join(registered)})"
        )
    elif NNUNET_DATASET not in ((params.get("prepare") or {}).get("datasets") or []):
        # Its stage reads the split that dataset's prepare stage writes (fold 0 = the study's train / val split).
        problems.append(
            f"nnunet: its dataset '{NNUNET_DATASET}' is not in prepare.datasets, so no stage writes its split "
            f"(data/splits/{NNUNET_DATASET}.json), which its runs train on"
        )
    problems += [
        f"nnunet.{key} is missing; dvc.yaml's nnunet stage reads it"
        for key in ("configuration", "augmentation_workers", "processes")
        if key not in section
    ]
    scales = section.get("scales")
    if scale is not None and not (isinstance(scales, dict) and isinstance(scales.get(scale), dict)):
        known = ", ".join(map(str, scales)) if isinstance(scales, dict) else "none"
        problems.append(
            f"nnunet.scales has no entry for scale '{scale}', which its runs read (trainer, ...); it has: {known}"
        )
    return seeds


def _universal_block(study: dict, problems: list[str]) -> tuple[list, list, list]:
    """The domains, models and independent models of ``study.universal`` (dvc.yaml's train_universal stage reads both
    domains and the models, its train_independent stage the domains and the independent models)."""
    block = study.get("universal")
    if not isinstance(block, dict):
        problems.append(
            "study.universal must be a mapping with domains, models and independent, which dvc.yaml's "
            "train_universal and train_independent stages read (models: [] for no universal model, independent: [] "
            f"for no independent one); got {block!r}"
        )
        return [], [], []
    domains = _names(block, "domains", problems, where="study.universal")
    if domains and len(domains) != UNIVERSAL_DOMAINS:
        problems.append(
            f"study.universal.domains must name {UNIVERSAL_DOMAINS} datasets (dvc.yaml's train_universal stage "
            f"trains one pair); got {domains}"
        )
    models = _names(block, "models", problems, empty=True, where="study.universal")
    return domains, models, _names(block, "independent", problems, empty=True, where="study.universal")


def _sub_block(study: dict, key: str, what: str, problems: list[str]) -> tuple[list, list]:
    """The datasets and models of ``study.<key>``, which dvc.yaml's stage ``train_<key>`` reads, so it must be
    there."""
    block = study.get(key)
    if not isinstance(block, dict):
        problems.append(
            f"study.{key} must be a mapping with datasets and models, which dvc.yaml's train_{key} stage reads "
            f"(models: [] for no {what}); got {block!r}"
        )
        return [], []
    datasets = _names(block, "datasets", problems, empty=True, where=f"study.{key}")
    return datasets, _names(block, "models", problems, empty=True, where=f"study.{key}")


def _block_problems(
    where: str, datasets: list, models: list, ndim: int, params: dict, width: dict, models_key: str = "models"
) -> list[str]:
    """Every problem of one block of the grid: its datasets (registered, prepared by a stage, of ``ndim`` spatial
    dimensions) and its variants (defined, and built by ``create_model`` for each of its datasets' inputs), the
    variants listed under ``<where>.<models_key>``."""
    from repro.models import model_spatial_dims  # torch, imported only when a grid is checked

    problems: list[str] = []
    kind = {2: "images", 3: "volumes"}[ndim]
    registered = list_datasets()
    prepare = params.get("prepare") or {}
    prepared = set(prepare.get("datasets") or []) | set(prepare.get("custom_datasets") or {})
    shapes = set()
    for name in datasets:
        if name not in registered:
            problems.append(
                f"{where}.datasets: unknown dataset '{name}'; {_suggest(name, registered)}"
                f"registered: {', '.join(registered)} (add your own under prepare.custom_datasets)"
            )
            continue
        if name not in prepared:
            problems.append(
                f"{where}.datasets: '{name}' is neither in prepare.datasets nor in prepare.custom_datasets, so no "
                "stage prepares it"
            )
        if models:  # a dataset trains here only with variants: then it needs its training settings
            try:
                dataset_training(name, params)
            except ValueError as error:
                problems.append(f"{where}.datasets: {error}")
        spec = get_dataset(name)
        if spec.ndim != ndim:
            other = "study.volumes.datasets" if spec.ndim == 3 else "study.datasets"
            problems.append(f"{where}.datasets: '{name}' holds {spec.ndim}D data, not {kind}; list it in {other}")
            continue
        shapes.add((spec.in_channels, 1 if spec.num_classes == 2 else spec.num_classes))

    variants = list(params.get("models") or {})
    for name in models:
        if name not in variants:
            problems.append(
                f"{where}.{models_key}: unknown model variant '{name}'; {_suggest(name, variants)}"
                f"params.yaml's models define: {', '.join(variants)}"
            )
            continue
        try:
            variant = model_variant(name, params)
        except ValueError as error:
            problems.append(str(error))
            continue
        try:
            dims = model_spatial_dims(variant.arch)
        except ValueError:
            dims = ndim  # an unknown arch: create_model's error below names it
        if dims != ndim:
            other = "study.volumes.models" if dims == 3 else "study.models"
            problems.append(
                f"{where}.{models_key}: '{name}' ({variant.arch}) is a {dims}D network, not for {kind}; list it in "
                f"{other}"
            )
            continue
        for in_channels, num_classes in sorted(shapes) or [(3 if ndim == 2 else 1, 1)]:
            error = _build_error(variant.arch, in_channels, num_classes, {**width, **variant.options})
            if error:
                problems.append(f"models.{name} ({variant.arch} {variant.options}): {error}")
                break
    return problems


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

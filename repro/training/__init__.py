"""Training: one cell of the study from settings to its written record.

- ``run``: one cell (config -> data -> model -> train -> evaluate -> record), as ``notebooks/train.ipynb`` runs it;
  a universal model of several domains (one network, one Trainer), as ``notebooks/train_universal.ipynb`` runs it.
- ``trainer``: the recipe's Trainer and its checkpoints; ``inference``: sliding-window prediction and BatchNorm
  re-estimation; ``losses`` and ``metrics``; ``device``: threads, device, seeds, the machine.
- ``identity``: what decides a run's result (checked before a checkpoint is resumed); ``record``: the one schema
  and writer of a run's ``metrics.json``, ``per_image.csv`` and ``history.csv``; ``figures``: a run's figures.

May import ``repro.models``, ``repro.data``, ``repro.config``, ``repro.complexity`` and ``repro.provenance``; of the
project's modules only ``repro.nnunet`` (nnU-Net's record), ``repro.predict`` (a trained run on new images) and
``repro.runner.equivalence`` (the machine a proof ran on) import it, besides the notebooks, scripts and tests.
"""

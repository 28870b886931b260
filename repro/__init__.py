"""unet-repro: an executable reproducibility study of the U-Net family for medical image segmentation.

Sub-packages, one concern each (each ``__init__`` says what lives there and what it may import):

- ``repro.data``: dataset registry, readers, splits, prepare, loading prepared arrays, augmentation;
- ``repro.models``: the architectures behind ``create_model``;
- ``repro.training``: one run (trainer, inference, losses, metrics, identity, record);
- ``repro.analysis``: from the runs' records to tables, statistics, verdicts, figures and reports (no torch);
- ``repro.runner``: the grid, the Dask/SLURM runner, the re-record rule's proof.

Beside them: ``repro.config`` (params.yaml as typed settings), ``repro.complexity`` and ``repro.pruning`` (what a
network costs), ``repro.table_files`` (the one writer of the study's tables, which imports nothing of the project),
``repro.provenance`` (the training code's versions and the log of changes proven to alter no number),
``repro.nnunet`` (nnU-Net v2 as a stage), ``repro.predict`` (a trained run on new images) and ``repro.study`` (the
runner's command line). Arrows point down the list: ``data`` imports nothing of the project's
packages, ``training`` imports ``data`` and ``models``, ``analysis`` and ``runner`` never import ``training`` for a
run.
"""

__version__ = "0.1.0"

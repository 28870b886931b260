"""unet-repro: an executable reproducibility study of the U-Net family for medical image segmentation.

Sub-packages, one concern each: ``repro.data`` (dataset registry, readers, splits, prepare, loading prepared arrays,
augmentation), ``repro.models`` (architectures behind ``create_model``), ``repro.training`` (one run: trainer,
inference, losses, metrics, identity, record); beside them ``repro.config`` (params.yaml as typed settings),
``repro.complexity``, ``repro.nnunet``, the analysis modules (``repro.stats``, ``repro.claims``, ``repro.report``, ...,
which know nothing of torch) and the runner (``repro.study``).
"""

__version__ = "0.1.0"

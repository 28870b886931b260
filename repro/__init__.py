"""unet-repro: an executable reproducibility study of the U-Net family for medical image segmentation.

Sub-packages and modules, one concern each: ``repro.data`` (dataset registry, readers, splits, prepare),
``repro.models`` (architectures behind ``create_model``), ``repro.losses``, ``repro.metrics``, ``repro.train``,
``repro.complexity``, ``repro.stats`` and ``repro.report`` (the last two know nothing of torch).
"""

__version__ = "0.1.0"

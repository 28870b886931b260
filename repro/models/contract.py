"""What every network behind ``create_model`` promises, in one base class: :class:`SegmentationNetwork`.

Adding an architecture is one module with one subclass of it, one line in the registry (``repro.models``) and one
variant in params.yaml. The subclass states the facts a reader needs next to its code:

- ``paper``: the publication it reproduces; ``official_code``: the official repository (and file) it follows, or
  why there is none; its module docstring lists every deviation from that code;
- ``spatial_dims``: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``);
- ``size_divisor`` (and ``min_input_size``): the input sizes that pass through it unchanged; ``forward`` checks
  its input once with :meth:`SegmentationNetwork.check_input`;
- ``deep_supervision``: True when train mode returns a list of logits (deepest decoder output last);
- ``auxiliary_loss``: after a train-mode forward, a scalar the training adds to its loss (SegResNet-VAE's VAE
  term, already weighted); None for every other network;
- ``channels_last``: whether the network may run in channels-last memory format (the trainer's default, faster on
  a CPU); False where its code needs the standard layout;
- ``domains``: how many domains (datasets) one network serves, each with its own input block, normalisation and
  head; a network with several reads its ``domain`` attribute in ``forward`` (3D U²-Net's universal model, which
  the trainer gives batches of each domain in turn); 1 for every other network.

The training code reads these attributes directly; tests/test_models.py holds every registered network to them.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from repro.models.blocks import check_input_size


class SegmentationNetwork(nn.Module):
    """Base class of the study's networks: images or volumes in, logits of the same spatial size out.

    Class attributes a subclass sets: ``paper``, ``official_code``, ``size_divisor`` (or an instance sets it from
    its depth), and ``spatial_dims`` where it is not 2. It adds no parameter, buffer or module: a network's
    weights, initialisation and outputs are those of its own layers.
    """

    paper: ClassVar[str]
    official_code: ClassVar[str]
    spatial_dims: int = 2
    size_divisor: int
    min_input_size: int | None = None
    deep_supervision: bool = False
    auxiliary_loss: Tensor | None = None
    channels_last: bool = True
    domains: int = 1
    domain: int = 0

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the network and the sizes it takes when ``x`` cannot pass through unchanged."""
        check_input_size(x, self.size_divisor, type(self).__name__, self.min_input_size, spatial_dims=self.spatial_dims)

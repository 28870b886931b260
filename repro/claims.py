"""The published claims this study puts to the test (data only).

Each claim names the variant pairs that test it, the metric, and what the paper reported for each pair.
Claimed differences are fractions in the claim's metric (``0.0186`` is 1.86 IoU points) and are
``better - baseline``. Variant names are the model names under ``results/runs/<dataset>/``.

Metrics: ``"dice"`` and ``"iou"`` are per-image foreground Dice / IoU averaged over test images;
``"miou_bg"`` is the mean IoU over all classes including background (what TinyU-Net reports as mIoU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["superiority", "equivalence"]
Metric = Literal["dice", "iou", "miou_bg"]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison that bears on a claim.

    Attributes:
        better: the variant the paper favours; for an equivalence claim, the cheaper variant said to
            match the baseline.
        baseline: the variant it is compared with.
        claimed_difference: what the paper reports for ``better - baseline`` in the claim's metric, as a
            fraction; None when the paper gives no number for this pair.
        source: where the number comes from (or why there is none).
        claimed_on: the dataset the paper measured ``claimed_difference`` on (None without a number): the
            study tests the same difference on other data, so a reader should know where it came from.
    """

    better: str
    baseline: str
    claimed_difference: float | None
    source: str
    claimed_on: str | None = None

    def __post_init__(self) -> None:
        if (self.claimed_difference is None) != (self.claimed_on is None):
            raise ValueError(f"{self.better} - {self.baseline}: a claimed difference needs its dataset, and only it")


@dataclass(frozen=True)
class Claim:
    """A published claim and the comparisons that test it.

    Attributes:
        id: short identifier, e.g. "C1".
        title: the claim in words.
        kind: "superiority" (better > baseline) or "equivalence" (better ≈ baseline within a margin).
        metric: the test metric, "dice", "iou" or "miou_bg".
        comparisons: the variant pairs; the claim holds only if every comparison does.
    """

    id: str
    title: str
    kind: ClaimKind
    metric: Metric
    comparisons: tuple[Comparison, ...]


_UNETPP = "Zhou et al., UNet++ (DLMIA 2018)"
_TINYUNET = "TinyU-Net (CMRF)"
_LIGHT_UNET = "Light U-Net paper"
_NUCLEI = "cell nuclei (Data Science Bowl 2018)"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="C1",
        title="UNet++ outperforms U-Net",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unetpp",
                "unet",
                0.0186,
                f"{_UNETPP}: nuclei IoU 92.63 vs 90.77 (+1.86; the smallest per-dataset headline gain). "
                "Average over datasets +3.9 IoU; TMI 2019 version: +1.87 nuclei, +0.62 EM.",
                claimed_on=_NUCLEI,
            ),
        ),
    ),
    Claim(
        id="C2",
        title="UNet++ outperforms a wide U-Net of similar size: the gain is not parameter count",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unetpp",
                "wide_unet",
                0.0171,
                f"{_UNETPP}: nuclei IoU 92.63 vs 90.92 for wide U-Net (+1.71); average over datasets +3.4 IoU.",
                claimed_on=_NUCLEI,
            ),
        ),
    ),
    Claim(
        id="C3",
        title="TinyU-Net (0.48M parameters) outperforms U-Net",
        kind="superiority",
        metric="miou_bg",
        comparisons=(
            Comparison(
                "tinyunet",
                "unet",
                0.0280,
                f"{_TINYUNET}: ISIC2018 mIoU 85.49 vs 82.69 (+2.80); lesion IoU 80.04 vs 76.14 (+3.90).",
                claimed_on="ISIC2018",
            ),
        ),
    ),
    Claim(
        id="C4a",
        title="CMRF blocks improve TinyU-Net over plain convolution blocks",
        kind="superiority",
        metric="miou_bg",
        comparisons=(Comparison("tinyunet", "tinyunet_plain", None, f"{_TINYUNET}: ablation; no number used here."),),
    ),
    Claim(
        id="C4b",
        title="Swapping U-Net blocks for CMRF keeps or raises IoU",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unet_cmrf",
                "unet",
                0.0034,
                f"{_TINYUNET}: lesion IoU +0.89 and +0.34 in the paper's two block swaps (the smaller used).",
                claimed_on="ISIC2018",
            ),
        ),
    ),
    Claim(
        id="C4c",
        title="N = 8 cascaded depth-wise convolutions in CMRF is best",
        kind="superiority",
        metric="miou_bg",
        comparisons=tuple(
            Comparison(
                "tinyunet",
                f"tinyunet_n{n_dwconv}",
                round(0.8027 - miou, 4),
                f"{_TINYUNET}: NCP mIoU 80.27 at N = 8 vs {100 * miou:.2f} at N = {n_dwconv}.",
                claimed_on="NCP (COVID-19 CT)",
            )
            for n_dwconv, miou in ((1, 0.7924), (2, 0.7958), (4, 0.7977), (16, 0.7956))
        ),
    ),
    Claim(
        id="C5a",
        title="The SDI skip module improves U-Net v2",
        kind="superiority",
        metric="dice",
        comparisons=(
            Comparison(
                "unetv2",
                "unetv2_nosdi",
                None,
                "U-Net v2: its ISIC2018 +2.48 DSC (+3.90 IoU) is the gain over the previous best method with a "
                "PVT encoder, not an SDI ablation, so it is no size of the SDI effect to test against: the "
                "direction only is tested.",
            ),
        ),
    ),
    Claim(
        id="C5b",
        title="Attention inside SDI improves U-Net v2",
        kind="superiority",
        metric="dice",
        comparisons=(Comparison("unetv2", "unetv2_noattn", None, "U-Net v2: design claim; no number given."),),
    ),
    Claim(
        id="C6",
        title="Light U-Nets match U-Net (bilinear) with 36-89% fewer parameters",
        kind="equivalence",
        metric="dice",
        comparisons=tuple(
            Comparison(
                variant,
                "unet_bilinear",
                round(dice - 0.929, 4),
                f"{_LIGHT_UNET}: Dice {dice} vs 0.929.",
                claimed_on="the Light U-Net paper's test set (not recorded here)",
            )
            for variant, dice in (("light_unet", 0.927), ("lighter_unet_128", 0.928), ("lighter_unet_1", 0.918))
        ),
    ),
)

"""The published claims this study puts to the test (data only).

Each claim names the variant pairs that test it, the metric, and what the paper reported for each pair.
Claimed differences are fractions in the claim's metric (``0.0186`` is 1.86 IoU points) and are
``better - baseline``. Variant names are the model names under ``results/<scale>/runs/<dataset>/``.

Metrics: ``"dice"`` and ``"iou"`` are per-image foreground Dice / IoU averaged over test images;
``"miou_bg"`` is the mean IoU over all classes including background (what TinyU-Net reports as mIoU).

A comparison may score a variant at a pruned depth (``better_level`` / ``baseline_level``: ``"L1"``..``"L4"``,
read from the runs' ``test_pruned`` scores) instead of its own test score, and may carry a ``design`` note where
the study's construction of the comparison is its own rather than the paper's. A claim may be restricted to some
datasets (``datasets``), and a sensitivity analysis of another claim names it (``sensitivity_of``): it is a claim
of its own, with its own family, so it leaves the primary claim's error control as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ClaimKind = Literal["superiority", "equivalence", "non-inferiority"]
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
        design: where the comparison as built here is the study's own and not the paper's, what differs (None:
            the paper's own comparison); shown beside the verdict so that it is read as a verdict on this design.
        better_level: the pruned depth (``"L1"``..``"L4"``) at which ``better`` is scored, from its runs'
            ``test_pruned`` scores; None: the run's own test score.
        baseline_level: the same for ``baseline``.
    """

    better: str
    baseline: str
    claimed_difference: float | None
    source: str
    claimed_on: str | None = None
    design: str | None = None
    better_level: str | None = None
    baseline_level: str | None = None

    def __post_init__(self) -> None:
        if (self.claimed_difference is None) != (self.claimed_on is None):
            raise ValueError(f"{self.better} - {self.baseline}: a claimed difference needs its dataset, and only it")
        if (self.better, self.better_level) == (self.baseline, self.baseline_level):
            raise ValueError(f"{self.better} - {self.baseline}: a comparison needs two different scores")


@dataclass(frozen=True)
class Claim:
    """A published claim and the comparisons that test it.

    Attributes:
        id: short identifier, e.g. "C1".
        title: the claim in words.
        kind: "superiority" (better > baseline), "equivalence" (better ≈ baseline within a margin) or
            "non-inferiority" (better is at most a margin below baseline); the margin is the study's
            (``aggregate.tost_margin`` in params.yaml), so a non-inferiority comparison claims no number.
        metric: the test metric, "dice", "iou" or "miou_bg".
        comparisons: the variant pairs; the claim holds only if every comparison does.
        datasets: the only datasets the claim is tested on (None: every dataset of the study).
        sensitivity_of: the id of the claim this one re-tests in another setting (None for a primary claim).
    """

    id: str
    title: str
    kind: ClaimKind
    metric: Metric
    comparisons: tuple[Comparison, ...]
    datasets: tuple[str, ...] | None = None
    sensitivity_of: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "non-inferiority" and any(c.claimed_difference is not None for c in self.comparisons):
            raise ValueError(f"{self.id}: a non-inferiority claim is tested at the study's margin, not a number")
        if self.datasets is not None and not self.datasets:
            raise ValueError(f"{self.id}: an empty dataset restriction would test the claim nowhere")


_UNETPP = "Zhou et al., UNet++ (DLMIA 2018)"
_UNETPP_TMI = "Zhou et al., UNet++ (IEEE TMI 2019)"
_TINYUNET = "TinyU-Net (CMRF)"
_LIGHT_UNET = "Light U-Net paper"
_NUCLEI = "cell nuclei (Data Science Bowl 2018)"
_DSB2018 = "dsb2018-nuclei-96"
_HIPPOCAMPUS = "msd-task04-hippocampus"
_LEFT_ATRIUM = "la2018-atrium-lgemri"
# TinyU-Net's N-ablation ran on NCP, multi-class COVID-19 CT (ground-glass opacity, consolidation): this is the
# project's CT dataset of that kind.
_COVID_CT = "covid19-ct-medseg-infnet"
# The 2D datasets of the default study, for the claims about 2D networks.
_PLANAR = (_DSB2018, "kvasir-seg", "ph2-dermoscopy")
# The sensitivity study's variants: the UNet++ paper's own Keras configuration at width 1.0 (params.yaml).
_PAPER_SETTING = "the UNet++ paper's own Keras configuration at width 1.0"
_C1_SOURCE = (
    f"{_UNETPP}: nuclei IoU 92.63 vs 90.77 (+1.86; the smallest per-dataset headline gain). "
    "Average over datasets +3.9 IoU; TMI 2019 version: +1.87 nuclei, +0.62 EM."
)
_UNETV2_DESIGN = (
    "the study's U-Net v2 has a CNN encoder trained from scratch (encoder cnn, with PVTv2-b2's strides and "
    "channels: a pretrained PVTv2-b2 cannot be fetched here), where the paper used a pretrained PVTv2-b2; it "
    "feeds all six levels of that encoder (strides 1-32, levels all) through SDI to full-resolution logits, as "
    "the official README advises for one's own data, not the paper's four levels at strides 4-32 "
    "(unetv2_stride4 is that layout, as a reference)"
)
_C2_SOURCE = f"{_UNETPP}: nuclei IoU 92.63 vs 90.92 for wide U-Net (+1.71); average over datasets +3.4 IoU."

CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="C1",
        title="UNet++ outperforms U-Net",
        kind="superiority",
        metric="iou",
        comparisons=(Comparison("unetpp", "unet", 0.0186, _C1_SOURCE, claimed_on=_NUCLEI),),
    ),
    Claim(
        id="C2",
        title="UNet++ outperforms a wide U-Net of similar size: the gain is not parameter count",
        kind="superiority",
        metric="iou",
        comparisons=(Comparison("unetpp", "wide_unet", 0.0171, _C2_SOURCE, claimed_on=_NUCLEI),),
    ),
    Claim(
        id="C3",
        title="TinyU-Net (0.48M parameters) outperforms U-Net",
        kind="superiority",
        metric="miou_bg",
        comparisons=(
            Comparison(
                "tinyunet",
                "unet_w1",
                0.0280,
                f"{_TINYUNET}: ISIC2018 mIoU 85.49 vs 82.69 (+2.80); lesion IoU 80.04 vs 76.14 (+3.90).",
                claimed_on="ISIC2018",
                design="U-Net here is the UNet++ paper's 7.76M-parameter network (unet_w1, at its official widths, "
                "as TinyU-Net is at its own), not the 24.89M-parameter U-Net TinyU-Net was compared with",
            ),
        ),
    ),
    Claim(
        id="C4a",
        title="CMRF blocks improve TinyU-Net over plain convolution blocks",
        kind="superiority",
        metric="miou_bg",
        comparisons=(
            Comparison(
                "tinyunet",
                "tinyunet_plain",
                None,
                f"{_TINYUNET}: ablation; no number used here.",
                design="the plain-block TinyU-Net is the study's own: TinyU-Net with every CMRF block replaced by "
                "two 3x3 convolutions (block double_conv)",
            ),
        ),
    ),
    Claim(
        id="C4b",
        title="Swapping U-Net blocks for CMRF keeps or raises IoU",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unet_cmrf",
                "unet_w1",
                0.0034,
                f"{_TINYUNET}: lesion IoU +0.89 and +0.34 in the paper's two block swaps (the smaller used).",
                claimed_on="ISIC2018",
                design="the study swaps CMRF blocks into U-Net at U-Net's official widths (both sides at width 1.0: "
                "at the study's 0.5 the first CMRF's cascade would be one channel wide); the paper swapped them "
                "into SegNet and CMUNeXt",
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
        # Restricted to CT before any C4c run existed (a design choice made before the data): the paper ran its
        # N-ablation on NCP, multi-class COVID-19 CT in mIoU, not on nuclei, polyps or skin lesions, and the
        # project has a CT dataset of that kind (GGO and consolidation). mIoU is miou_bg, over all three classes.
        datasets=(_COVID_CT,),
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
                design=_UNETV2_DESIGN + "; unetv2_nosdi (sdi false) removes SDI together with its channel and "
                "spatial attention (the first step of SDI in the paper), keeping the 1x1 projections as plain "
                "additive skips",
            ),
        ),
    ),
    Claim(
        id="C5b",
        title="Attention inside SDI improves U-Net v2",
        kind="superiority",
        metric="dice",
        comparisons=(
            Comparison(
                "unetv2",
                "unetv2_noattn",
                None,
                "U-Net v2: design claim; no number given.",
                design=_UNETV2_DESIGN + "; unetv2_noattn (attention false) keeps SDI's resizing, 3x3 smoothing and "
                "Hadamard product and drops only the channel and spatial attention",
            ),
        ),
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
    Claim(
        id="C7",
        title="U-Net < UNet+ < UNet++: each step of nested, then dense, skip connections helps",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unet_plus",
                "unet",
                None,
                f"{_UNETPP_TMI}: UNet+ (nested skips without the dense connections) ranks between U-Net and UNet++ "
                "in the paper's comparison; it gives the ordering, no single number to test against.",
            ),
            Comparison(
                "unetpp",
                "unet_plus",
                None,
                f"{_UNETPP_TMI}: the dense skip connections of UNet++ improve on UNet+'s plain nested ones; the "
                "ordering only, no single number.",
            ),
        ),
    ),
    Claim(
        id="C8",
        title="Deep supervision improves UNet++",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unetpp_ds",
                "unetpp",
                None,
                f"{_UNETPP} and {_UNETPP_TMI}: UNet++ with deep supervision against UNet++ without it. The "
                "direction only is tested: the papers' per-dataset gains with and without deep supervision "
                "differ by a few tenths of an IoU point, in both directions, so no one number stands for the "
                "effect.",
            ),
        ),
    ),
    Claim(
        id="C9",
        title="UNet++ pruned to depth L3 keeps its accuracy",
        kind="non-inferiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unetpp_ds",
                "unetpp_ds",
                None,
                f"{_UNETPP} and {_UNETPP_TMI}: a deeply supervised UNet++ pruned at inference to L3 loses a modest "
                "amount of IoU against the full L4 network for a large speed-up. The papers give no margin, so "
                "the study's equivalence margin is used: non-inferiority of L3 against L4 within it, in IoU (the "
                "papers' metric; the same margin is a stricter bound in IoU than in Dice).",
                better_level="L3",
                baseline_level="L4",
            ),
        ),
    ),
    Claim(
        id="C1s",
        title=f"UNet++ outperforms U-Net, in {_PAPER_SETTING} (sensitivity analysis of C1)",
        kind="superiority",
        metric="iou",
        comparisons=(Comparison("unetpp_2018", "unet_2018", 0.0186, _C1_SOURCE, claimed_on=_NUCLEI),),
        datasets=(_DSB2018,),
        sensitivity_of="C1",
    ),
    Claim(
        id="C2s",
        title=f"UNet++ outperforms a wide U-Net of similar size, in {_PAPER_SETTING} (sensitivity analysis of C2)",
        kind="superiority",
        metric="iou",
        comparisons=(Comparison("unetpp_2018", "wide_unet_2018", 0.0171, _C2_SOURCE, claimed_on=_NUCLEI),),
        datasets=(_DSB2018,),
        sensitivity_of="C2",
    ),
    Claim(
        id="C10",
        title="3D U-Net beats a 2D U-Net applied slice by slice on volumetric data",
        kind="superiority",
        metric="dice",
        comparisons=(
            Comparison(
                "unet3d",
                "unet2d_slices",
                None,
                "Cicek et al., 3D U-Net (MICCAI 2016): the 3D network against its 2D counterpart on each slice; the "
                "paper's Xenopus kidney comparison is semi-automatic (sparse annotation), are not this "
                "setting, so the direction only is tested.",
                design="the 2D baseline is the study's U-Net on each slice along the volume's first axis",
            ),
        ),
        datasets=(_HIPPOCAMPUS,),
    ),
    Claim(
        id="C11",
        title="MultiResUNet outperforms U-Net",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "multiresunet",
                "unet",
                None,
                "Ibtehaz & Rahman, MultiResUNet (Neural Networks 2020): relative Jaccard improvements of 0.62% to "
                "10.15% over U-Net across its five datasets. They are relative to each dataset's U-Net score, "
                "which does not carry over to these datasets as an absolute difference: the direction only is "
                "tested.",
            ),
        ),
        datasets=_PLANAR,
    ),
    Claim(
        id="C12",
        title="U-Net's skip connections beat FCN's decoder",
        kind="superiority",
        metric="iou",
        comparisons=(
            Comparison(
                "unet",
                "fcn",
                None,
                "Ronneberger et al., U-Net (MICCAI 2015): the symmetric decoder with skip connections is the "
                "paper's answer to FCN's coarse upsampling; no head-to-head number on these tasks, so the "
                "direction only is tested.",
                design="the FCN-8s here has the U-Net encoder's widths and is trained from scratch (no VGG16 "
                "weights can be fetched), so only the decoders differ",
            ),
        ),
        datasets=_PLANAR,
    ),
    Claim(
        id="C13",
        title="The VAE branch regularises SegResNet: SegResNet-VAE >= SegResNet",
        kind="non-inferiority",
        metric="dice",
        comparisons=(
            Comparison(
                "segresnet_vae",
                "segresnet",
                None,
                "Myronenko, SegResNet-VAE (BrainLes 2018, on BraTS 2018): the VAE branch regularises the shared "
                "encoder; the paper gives no ablation number, so SegResNet-VAE is tested to be no worse than "
                "SegResNet, within the study's margin.",
            ),
        ),
        datasets=(_HIPPOCAMPUS,),
    ),
    Claim(
        id="C14",
        title=(
            "None of the variants beats a plain U-Net configured by nnU-Net "
            "(nnU-Net's configuration at the study's budget)"
        ),
        kind="non-inferiority",
        metric="dice",
        comparisons=tuple(
            Comparison(
                "nnunet",
                variant,
                None,
                "Isensee et al., nnU-Net Revisited (MICCAI 2024): recent architectures do not beat an nnU-Net "
                "configured U-Net under a fair protocol; tested as nnU-Net being no worse than each network, "
                "within the study's margin.",
                design="nnU-Net's configuration at the study's budget: its own plan, preprocessing and schedule, "
                "trained for as long as one of the study's 3D runs (params.yaml nnunet), not its default 1,000 epochs "
                "of five folds; the networks with the study's recipe. V-Net is out of the grid (its fixed widths "
                "cost about three times the others per step)",
            )
            for variant in ("unet3d", "unet2d_slices", "segresnet", "segresnet_vae")
        ),
        datasets=(_HIPPOCAMPUS,),
    ),
    Claim(
        id="C15",
        title="One universal 3D U²-Net serves several domains as well as a network per domain",
        kind="non-inferiority",
        metric="dice",
        comparisons=(
            Comparison(
                "u2net3d_universal",
                "u2net3d",
                None,
                "Huang et al., 3D U²-Net (MICCAI 2019): one universal model for several organs, with shared "
                "pointwise and per-domain channel-wise kernels, reaches accuracy comparable to independent models "
                "with about 1% of their parameters. The paper gives no margin, so the universal model is tested "
                "to be no worse than the independent models on each domain, within the study's margin.",
                design="two domains (Hippocampus and the left atrium), not the paper's five; the independent "
                "models are the same separable network with one domain (the paper's are standard convolutions); "
                "each domain gets as many training batches in the universal model as in its own",
            ),
        ),
        datasets=(_HIPPOCAMPUS, _LEFT_ATRIUM),
    ),
)

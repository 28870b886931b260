"""PVTv2 backbone (Wang et al., 2022, "PVT v2: Improved Baselines with Pyramid Vision Transformer").

A four-stage transformer pyramid without a classification head: each stage embeds its input with an
overlapping strided convolution (7x7 stride 4 for the first stage, 3x3 stride 2 after), runs pre-norm
transformer blocks, applies a LayerNorm and returns an NCHW map, so the stages give strides 4, 8, 16, 32.
Attention shrinks keys and values with a ``sr x sr`` stride-``sr`` convolution ("spatial-reduction attention"),
and the MLP has a depthwise 3x3 convolution between its two linear layers, which gives the positional
information that PVTv1's position embeddings gave.

:func:`pvt_v2_b2` builds the b2 configuration used by U-Net v2. Module names follow timm's ``pvt_v2_b2`` so
that its state dict (``patch_embed.proj``, ``stages.N.downsample``, ``stages.N.blocks.M.attn.q`` ...) loads with
``load_state_dict`` once its classifier (``head.*``) is dropped; :func:`convert_official_state_dict` renames the
official release's keys (``patch_embed1``, ``block1.0``, ``norm1`` ...) to these. Checked against timm 1.0.31
(in a separate environment; timm is not a dependency): same parameter count (24,849,856), same state-dict keys
and shapes and, with shared weights, the same four outputs in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# pvt_v2_b2: one entry per stage.
B2_EMBED_DIMS = (64, 128, 320, 512)
B2_DEPTHS = (3, 4, 6, 3)
B2_NUM_HEADS = (1, 2, 5, 8)
B2_MLP_RATIOS = (8, 8, 4, 4)
B2_SR_RATIOS = (8, 4, 2, 1)

# The official code normalises the blocks and stage outputs with eps=1e-6 but keeps nn.LayerNorm's default
# (1e-5) in the patch embeddings and the spatial reduction; both are kept so pretrained weights behave the same.
BLOCK_NORM_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of each sample with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expected output is unchanged; eval mode is the identity.

    Args:
        p: probability of dropping a sample's branch.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution (kernel larger than stride), then LayerNorm.

    Args:
        in_channels: input channels.
        embed_dim: output channels.
        patch_size: convolution kernel (padding ``patch_size // 2`` keeps the size a multiple of ``stride``).
        stride: downsampling factor.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Return (B, H*W, C) tokens and the output height and width."""
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SpatialReductionAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a ``sr_ratio``-times smaller map.

    Args:
        dim: token channels.
        num_heads: attention heads (``dim`` must be divisible by it).
        sr_ratio: kernel and stride of the reduction convolution; 1 means plain attention (no ``sr``/``norm``).
        qkv_bias: whether the query and key/value projections have a bias.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, n_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x).reshape(batch, n_tokens, self.num_heads, head_dim).transpose(1, 2)
        context = x
        if self.sr_ratio > 1:
            context = self.norm(self.sr(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2))
        # kv's output is laid out as [keys | values], each split into heads: load-compatible with pretrained kv.
        k, v = self.kv(context).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


class DepthwiseConvMlp(nn.Module):
    """Linear -> depthwise 3x3 convolution -> GELU -> linear, on tokens laid out as an H x W map.

    Args:
        dim: token channels.
        hidden_dim: hidden channels.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(tokens_to_map(x, height, width)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class PVTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, each with stochastic depth.

    Args:
        dim: token channels.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        sr_ratio: spatial-reduction ratio of the attention.
        drop_path: stochastic-depth probability of both residual branches.
        qkv_bias: whether the attention's query and key/value projections have a bias.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        *,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = DepthwiseConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), height, width))
        return x + self.drop_path2(self.mlp(self.norm2(x), height, width))


class PVTStage(nn.Module):
    """One pyramid stage: an optional 3x3 stride-2 patch embedding, ``depth`` blocks and a final LayerNorm.

    Args:
        in_channels: channels of the previous stage (ignored when ``downsample=False``).
        dim: channels of this stage.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        sr_ratio: spatial-reduction ratio of the attention.
        drop_paths: stochastic-depth probability of each block (``depth`` values).
        downsample: whether the stage starts with a stride-2 patch embedding (the first stage's stride-4
            embedding is the backbone's ``patch_embed``, as in timm).
        qkv_bias: whether the attention's query and key/value projections have a bias.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop_paths: Sequence[float],
        *,
        downsample: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if len(drop_paths) != depth:
            raise ValueError(f"need one drop-path rate per block ({depth}); got {len(drop_paths)}")
        self.downsample = OverlapPatchEmbed(in_channels, dim, patch_size=3, stride=2) if downsample else None
        self.blocks = nn.ModuleList(
            PVTBlock(dim, num_heads, mlp_ratio, sr_ratio, drop_path=p, qkv_bias=qkv_bias) for p in drop_paths
        )
        self.norm = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an NCHW input to the stage's NCHW output."""
        if self.downsample is None:
            height, width = x.shape[-2:]
            x = x.flatten(2).transpose(1, 2)
        else:
            x, height, width = self.downsample(x)
        for block in self.blocks:
            x = block(x, height, width)
        return tokens_to_map(self.norm(x), height, width)


class PyramidVisionTransformerV2(nn.Module):
    """PVTv2 backbone returning the four stage outputs (NCHW, strides 4, 8, 16, 32).

    Args:
        in_channels: input image channels.
        embed_dims: channels of each stage.
        depths: blocks in each stage.
        num_heads: attention heads in each stage.
        mlp_ratios: MLP expansion of each stage.
        sr_ratios: attention spatial-reduction ratio of each stage.
        drop_path_rate: stochastic depth of the last block; it rises linearly from 0 over all blocks.
        qkv_bias: whether the attention's query and key/value projections have a bias.
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: Sequence[int] = B2_EMBED_DIMS,
        depths: Sequence[int] = B2_DEPTHS,
        num_heads: Sequence[int] = B2_NUM_HEADS,
        mlp_ratios: Sequence[float] = B2_MLP_RATIOS,
        sr_ratios: Sequence[int] = B2_SR_RATIOS,
        *,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        n_stages = len(embed_dims)
        if not all(len(arg) == n_stages for arg in (depths, num_heads, mlp_ratios, sr_ratios)):
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one value per stage")
        self.patch_embed = OverlapPatchEmbed(in_channels, embed_dims[0], patch_size=7, stride=4)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(n_stages)]
        self.stages = nn.ModuleList(
            PVTStage(
                embed_dims[i - 1] if i else in_channels,
                embed_dims[i],
                depths[i],
                num_heads[i],
                mlp_ratios[i],
                sr_ratios[i],
                rates[starts[i] : starts[i] + depths[i]],
                downsample=i > 0,
                qkv_bias=qkv_bias,
            )
            for i in range(n_stages)
        )
        self.out_channels = tuple(embed_dims)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, height, width = self.patch_embed(x)
        x = tokens_to_map(x, height, width)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) linear weights, LayerNorm 1/0, convolutions
    normal with std ``sqrt(2 / fan_out)`` (fan_out per group), all biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def pvt_v2_b2(in_channels: int = 3, *, drop_path_rate: float = 0.0) -> PyramidVisionTransformerV2:
    """The pvt_v2_b2 backbone (24,849,856 parameters with 3 input channels).

    Args:
        in_channels: input image channels.
        drop_path_rate: stochastic depth of the last block (U-Net v2 uses 0.1).
    """
    return PyramidVisionTransformerV2(in_channels, drop_path_rate=drop_path_rate, qkv_bias=True)


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official PVTv2 checkpoint's keys (whai362/PVT) to this module's (timm's) and drop the classifier.

    ``patch_embed1`` -> ``patch_embed``, ``patch_embedK`` -> ``stages.{K-1}.downsample``, ``blockK.M`` ->
    ``stages.{K-1}.blocks.M``, ``normK`` -> ``stages.{K-1}.norm``, ``mlp.dwconv.dwconv`` -> ``mlp.dwconv`` (the
    official MLP wraps its depthwise convolution in a module of its own). A dict already in this naming is
    returned without its ``head.*`` entries.
    """
    converted = {}
    for key, value in state_dict.items():
        first, _, rest = key.partition(".")
        if first == "head":
            continue
        if first.startswith("patch_embed") and first != "patch_embed":
            stage = int(first.removeprefix("patch_embed")) - 1
            first = "patch_embed" if stage == 0 else f"stages.{stage}.downsample"
        elif first.startswith("block") and first != "blocks":
            first = f"stages.{int(first.removeprefix('block')) - 1}.blocks"
        elif first.startswith("norm") and first[4:].isdigit():
            first = f"stages.{int(first.removeprefix('norm')) - 1}.norm"
        converted[f"{first}.{rest}".replace("mlp.dwconv.dwconv.", "mlp.dwconv.")] = value
    return converted

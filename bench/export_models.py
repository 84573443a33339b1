"""Export BENCHMARK ONNX models: the real architectures with random seeded weights and the production
models' I/O contracts, so that benchmarks run realistic compute without the real (licensed) weights.

Usage (needs the ``bench`` extra, i.e. torch)::

    python -m bench.export_models OUT_DIR [--only NAME] [--width W] [--seed S] [--no-verify]

Writes ``OUT_DIR/bench_<name>.onnx`` and ``OUT_DIR/models.json`` (parameters, multiply-adds and file
size next to the published figures of the real model) and prints the same table. The outputs of these
models are meaningless pictures and embeddings: never mistake them for the real models.

- ``inswapper`` (as inswapper_128): inputs ``target`` [N, 3, 128, 128] RGB in [0, 1] and ``source``
  [N, 512] latent, output ``output`` [N, 3, 128, 128] in [0, 1]; the (512, 512) ``emap`` is appended
  as the graph's last initializer. Architecture: ReSwapper's reconstruction of inswapper_128
  (somanchiu/ReSwapper ``StyleTransferModel_128.py``): a 7x7 + 3x3 + two stride-2 conv encoder to
  1024 x 32 x 32, six residual blocks of two 3x3 convs each followed by AdaIN (instance norm whose
  scale and shift are a linear map of the source latent), bilinear-upsampling conv decoder, tanh.
- ``arcface`` (as arcface_w600k_r50): input ``input.1`` [N, 3, 112, 112], output ``683`` [N, 512].
  InsightFace's iResNet-50 (arcface_torch ``iresnet50``): 3x3 stem, IBasicBlock stages (3, 4, 14, 3)
  of widths 64..512, BN + 512 * 7 * 7 -> 512 fully connected + BatchNorm1d.
- ``gfpgan`` (as gfpgan_1.4): input ``input`` [N, 3, 512, 512], output ``output`` same shape.
  GFPGANv1Clean as configured for GFPGAN v1.3/v1.4 (channel_multiplier 2, different_w, sft_half,
  input_is_latent): a half-width U-Net encoder, a linear layer to 16 style codes, and a StyleGAN2
  decoder with modulated/demodulated convs and SFT conditions from the U-Net. The style MLP is
  omitted (unused at inference, so absent from exported graphs too). The modulated conv is computed
  as input scaling, a shared conv and output demodulation (StyleGAN2-ADA's non-fused path, the same
  multiply-adds) because the grouped-conv trick of the reference code fixes the batch size in ONNX.

Every graph has a dynamic batch axis ``batch``. ``width`` scales every channel count (1.0 = the real
model); tests export tiny variants with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from bench.common import format_table, write_json
from pipeline.models.swapper import EMAP_SHAPE, load_emap
from pipeline.sessions import SessionConfig, create_session

log = logging.getLogger(__name__)

OPSET = 17
"""Opset 17 (IR 8) loads in every onnxruntime >= 1.14, like the project's test models."""

MODEL_NAMES = ("inswapper", "arcface", "gfpgan")


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to an even count >= 2 (SFT splits channels in halves)."""
    return max(2, 2 * round(channels * width / 2))


# ---------------------------------------------------------------------------------------------- inswapper
class AdaIN(nn.Module):
    """Instance norm of (N, C, H, W) features, then per-sample scale and shift, a linear map of the
    (N, latent_dim) source latent."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False, eps=1e-6)
        self.style = nn.Linear(latent_dim, 2 * channels)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(latent)[:, :, None, None].chunk(2, dim=1)
        return gamma * self.norm(x) + beta


class StyleResBlock(nn.Module):
    """x + AdaIN(conv(ReLU(AdaIN(conv(x))))), both convs 3x3 C -> C."""

    def __init__(self, channels: int, latent_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adain1 = AdaIN(channels, latent_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.adain2 = AdaIN(channels, latent_dim)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.adain1(self.conv1(x), latent))
        return x + self.adain2(self.conv2(y), latent)


class InswapperGenerator(nn.Module):
    """inswapper_128-like generator: ``target`` (N, 3, 128, 128) RGB [0, 1], ``source`` (N, 512)
    latent -> (N, 3, 128, 128) RGB [0, 1]. ``width`` 1.0 gives encoder widths 128/256/512/1024."""

    def __init__(self, width: float = 1.0, blocks: int = 6, latent_dim: int = EMAP_SHAPE[1]) -> None:
        super().__init__()
        c1, c2, c3, c4 = (scaled(c, width) for c in (128, 256, 512, 1024))
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 7, padding=3, padding_mode="reflect"),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c3, c4, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.blocks = nn.ModuleList(StyleResBlock(c4, latent_dim) for _ in range(blocks))
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(c4, c3, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(c3, c2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c2, c1, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c1, 3, 7, padding=3, padding_mode="reflect"),
            nn.Tanh(),
        )

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        x = self.encoder(target)
        for block in self.blocks:
            x = block(x, source)
        return (self.decoder(x) + 1.0) / 2.0


# ---------------------------------------------------------------------------------------------- arcface
class IBasicBlock(nn.Module):
    """iResNet block: BN, conv 3x3, BN, PReLU, conv 3x3 (strided), BN, plus the (projected) input."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module = (
            nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 or inplanes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.downsample(x)


class IResNet50(nn.Module):
    """ArcFace iResNet-50 at 112: (N, 3, 112, 112) -> (N, embedding_dim) embedding (not normalised)."""

    def __init__(self, width: float = 1.0, embedding_dim: int = 512) -> None:
        super().__init__()
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0], eps=1e-5)
        self.prelu = nn.PReLU(planes[0])
        stages: list[nn.Module] = []
        inplanes = planes[0]
        for depth, p in zip((3, 4, 14, 3), planes, strict=True):
            blocks = [IBasicBlock(inplanes, p, 2)] + [IBasicBlock(p, p, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = p
        self.stages = nn.Sequential(*stages)
        self.bn2 = nn.BatchNorm2d(planes[3], eps=1e-5)
        self.fc = nn.Linear(planes[3] * 7 * 7, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.prelu(self.bn1(self.conv1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


# ---------------------------------------------------------------------------------------------- gfpgan
def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class ModulatedConv(nn.Module):
    """StyleGAN2 modulated conv on (N, C_in, H, W) with an (N, style_dim) style, no bias, optional
    bilinear x2 upsampling first and weight demodulation (computed per sample from the shared weight)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, style_dim: int, *, demodulate: bool, upsample: bool
    ) -> None:
        super().__init__()
        self.modulation = nn.Linear(style_dim, c_in)
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)
        if self.upsample:
            x = _resize(x, 2.0)
        out = self.conv(x * s[:, :, None, None])
        if self.demodulate:
            weight_sq = self.conv.weight.pow(2).sum(dim=(2, 3))
            out = out * torch.rsqrt((s * s) @ weight_sq.t() + 1e-8)[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated conv * sqrt(2) + scaled fixed noise + bias, leaky ReLU 0.2."""

    noise: torch.Tensor

    def __init__(self, c_in: int, c_out: int, style_dim: int, resolution: int, *, upsample: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv(c_in, c_out, 3, style_dim, demodulate=True, upsample=upsample)
        self.noise_strength = nn.Parameter(torch.full((1,), 0.1))
        self.bias = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.register_buffer("noise", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        out = self.conv(x, style) * math.sqrt(2.0) + self.noise_strength * self.noise + self.bias
        return F.leaky_relu(out, 0.2)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (not demodulated) + bias, plus the upsampled previous RGB skip."""

    def __init__(self, c_in: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv(c_in, 3, 1, style_dim, demodulate=False, upsample=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is None:
            return out
        return out + _resize(skip, 2.0)


class UNetResBlock(nn.Module):
    """GFPGAN's residual block with bilinear rescaling (``factor`` 0.5 down, 2 up) between its convs."""

    def __init__(self, c_in: int, c_out: int, factor: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _resize(F.leaky_relu(self.conv1(x), 0.2), self.factor)
        out = F.leaky_relu(self.conv2(out), 0.2)
        return out + self.skip(_resize(x, self.factor))


def _sft_branch(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


class GfpganV1Clean(nn.Module):
    """GFPGAN v1.3/v1.4 (GFPGANv1Clean) at 512: (N, 3, 512, 512) RGB [-1, 1] -> same shape."""

    def __init__(self, width: float = 1.0, size: int = 512) -> None:
        super().__init__()
        self.levels = int(math.log2(size)) - 2  # resolutions 8 .. size
        resolutions = [2**i for i in range(2, self.levels + 3)]  # 4 .. size
        base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
        enc = {r: scaled(base[r] // 2, width) for r in resolutions}  # U-Net: half the decoder's width
        dec = {r: 2 * c for r, c in enc.items()}  # StyleGAN2 decoder, channel_multiplier 2
        self.style_dim = scaled(512, width)
        self.num_latent = 2 * (self.levels + 2) - 2

        self.conv_body_first = nn.Conv2d(3, enc[size], 1)
        down = list(reversed(resolutions))  # size .. 4
        self.conv_body_down = nn.ModuleList(UNetResBlock(enc[a], enc[b], 0.5) for a, b in pairwise(down))
        self.final_conv = nn.Conv2d(enc[4], enc[4], 3, padding=1)
        self.final_linear = nn.Linear(enc[4] * 4 * 4, self.num_latent * self.style_dim)
        up = resolutions  # 4 .. size
        self.conv_body_up = nn.ModuleList(UNetResBlock(enc[a], enc[b], 2.0) for a, b in pairwise(up))
        self.condition_scale = nn.ModuleList(_sft_branch(enc[r]) for r in up[1:])
        self.condition_shift = nn.ModuleList(_sft_branch(enc[r]) for r in up[1:])

        self.constant_input = nn.Parameter(torch.randn(1, dec[4], 4, 4))
        self.style_conv1 = StyleConv(dec[4], dec[4], self.style_dim, 4, upsample=False)
        self.to_rgb1 = ToRGB(dec[4], self.style_dim)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for a, b in pairwise(up):
            self.style_convs.append(StyleConv(dec[a], dec[b], self.style_dim, b, upsample=True))
            self.style_convs.append(StyleConv(dec[b], dec[b], self.style_dim, b, upsample=False))
            self.to_rgbs.append(ToRGB(dec[b], self.style_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips: list[torch.Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        latent = self.final_linear(feat.flatten(1)).view(-1, self.num_latent, self.style_dim)
        conditions = []
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[i])
            conditions.append((self.condition_scale[i](feat), self.condition_shift[i](feat)))

        out = self.constant_input.expand(x.shape[0], -1, -1, -1)
        out = self.style_conv1(out, latent[:, 0])
        rgb = self.to_rgb1(out, latent[:, 1], None)
        for level, (scale, shift) in enumerate(conditions):
            i = 1 + 2 * level
            out = self.style_convs[2 * level](out, latent[:, i])
            same, sft = out.chunk(2, dim=1)
            out = torch.cat([same, sft * scale + shift], dim=1)
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1])
            rgb = self.to_rgbs[level](out, latent[:, i + 2], rgb)
        return rgb


# ---------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Published:
    """Figures of the real model, as published (None where nothing is published). ``params_m`` is
    the fp32 file's bytes / 4 in millions: every stored value, parameters and buffers alike."""

    model: str
    file_bytes: int
    params_m: float
    gflops: float | None
    source: str


@dataclass(frozen=True)
class Spec:
    """A benchmark model: its builder (``width`` -> module), I/O contract and the real model's figures."""

    name: str
    build: Callable[[float], nn.Module]
    inputs: dict[str, tuple[int, ...]]
    """Input name -> shape with batch 1."""
    outputs: dict[str, tuple[int, ...]]
    """Output name -> shape with batch 1."""
    architecture: str
    published: Published


SPECS: dict[str, Spec] = {
    "inswapper": Spec(
        name="inswapper",
        build=lambda width: InswapperGenerator(width),
        inputs={"target": (1, 3, 128, 128), "source": (1, EMAP_SHAPE[1])},
        outputs={"output": (1, 3, 128, 128)},
        architecture="ReSwapper's reconstruction of inswapper_128 "
        "(somanchiu/ReSwapper StyleTransferModel_128.py)",
        published=Published(
            model="inswapper_128.onnx (InsightFace release v0.7, fp32)",
            file_bytes=554_253_681,
            params_m=round(554_253_681 / 4 / 1e6, 2),
            gflops=None,
            source="file size of deepinsight/insightface release v0.7 inswapper_128.onnx; params = bytes / 4 "
            "(incl. the 0.26M emap); InsightFace publishes no paper or FLOPs for it",
        ),
    ),
    "arcface": Spec(
        name="arcface",
        build=lambda width: IResNet50(width),
        inputs={"input.1": (1, 3, 112, 112)},
        outputs={"683": (1, EMAP_SHAPE[0])},
        architecture="InsightFace arcface_torch iresnet50, 112x112",
        published=Published(
            model="w600k_r50.onnx (InsightFace buffalo_l, ArcFace R50 WebFace600K)",
            file_bytes=174_383_860,
            params_m=round(174_383_860 / 4 / 1e6, 2),
            gflops=6.3,
            source="file size of InsightFace buffalo_l w600k_r50.onnx (174,383,860 bytes ~ 43.6M fp32); "
            "6.3 GFLOPs: InsightFace's figure for R50 at 112x112 as quoted in the task (not re-checked "
            "here), a multiply-add count",
        ),
    ),
    "gfpgan": Spec(
        name="gfpgan",
        build=lambda width: GfpganV1Clean(width),
        inputs={"input": (1, 3, 512, 512)},
        outputs={"output": (1, 3, 512, 512)},
        architecture="TencentARC GFPGANv1Clean (gfpganv1_clean_arch.py), v1.4 config, out_size 512",
        published=Published(
            model="gfpgan_1.4.onnx (FaceFusion models-3.0.0 export of GFPGANv1.4)",
            file_bytes=340_299_087,
            params_m=round(340_299_087 / 4 / 1e6, 2),
            gflops=None,
            source="file size of facefusion/models-3.0.0 gfpgan_1.4.onnx; params = bytes / 4 (the .pth "
            "checkpoint also holds the style MLP, unused at inference); no FLOPs published by the authors",
        ),
    ),
}


# ---------------------------------------------------------------------------------------------- counting
def count_params(model: nn.Module) -> int:
    """Learned parameters."""
    return sum(p.numel() for p in model.parameters())


def count_stored(model: nn.Module, name: str) -> int:
    """Every value a graph of ``model`` stores: parameters, buffers (BatchNorm statistics, StyleGAN
    noise) and, for the inswapper, the appended emap. Comparable with a real file's bytes / 4."""
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    emap = EMAP_SHAPE[0] * EMAP_SHAPE[1] if name == "inswapper" else 0
    return count_params(model) + buffers + emap


def count_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-adds of one forward pass of ``inputs`` (batch 1): Conv2d and Linear layers only
    (norms, activations, resizing and the demodulation matmuls are left out, as is usual)."""
    total = 0

    def conv_hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ModelReport:
    """One exported benchmark model: what ``models.json`` holds per model."""

    name: str
    file: str
    width: float
    seed: int
    params: int
    stored_values: int
    """Parameters + buffers + emap: see :func:`count_stored`."""
    macs: int
    onnx_bytes: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    architecture: str
    export_s: float
    max_abs_diff_vs_torch: float | None
    published: Published

    @property
    def gflops(self) -> float:
        """2 x multiply-adds, in 1e9."""
        return 2 * self.macs / 1e9


def emap_matrix(seed: int) -> npt.NDArray[np.float32]:
    """The seeded (512, 512) float32 orthogonal ``emap`` appended to ``bench_inswapper.onnx``."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal(EMAP_SHAPE))
    return q.astype(np.float32)


def _example_inputs(spec: Spec, batch: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand((batch, *shape[1:]), generator=gen) for shape in spec.inputs.values()]


def _io_shapes(args: Sequence[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
    return {
        a.name: [d.dim_param if d.dim_param else d.dim_value for d in a.type.tensor_type.shape.dim]
        for a in args
    }


def build_model(name: str, width: float = 1.0, seed: int = 0) -> nn.Module:
    """The torch module of benchmark model ``name`` with seeded random weights, in eval mode."""
    if name not in SPECS:
        raise KeyError(f"unknown benchmark model {name!r}, expected one of {list(SPECS)}")
    torch.manual_seed(seed)
    return SPECS[name].build(width).eval()


def export_model(
    name: str, out_dir: Path, *, width: float = 1.0, seed: int = 0, verify: bool = True
) -> ModelReport:
    """Export ``out_dir/bench_<name>.onnx``; with ``verify``, run it at batch 2 in onnxruntime and
    compare with torch (raises ``RuntimeError`` when they differ by more than 1e-3 of the output range)."""
    spec = SPECS[name]
    start = time.perf_counter()
    model = build_model(name, width, seed)
    params = count_params(model)
    with torch.device("meta"):  # shapes only: counting needs no arithmetic
        macs = count_macs(spec.build(width).eval(), [torch.empty(s) for s in spec.inputs.values()])
    path = Path(out_dir) / f"bench_{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    # TorchScript rejects numeric names such as '683': export with placeholders, rename afterwards.
    names = {f"in_{i}": n for i, n in enumerate(spec.inputs)} | {
        f"out_{i}": n for i, n in enumerate(spec.outputs)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            tuple(_example_inputs(spec, 2, seed)),
            str(path),
            dynamo=False,
            input_names=[k for k in names if k.startswith("in_")],
            output_names=[k for k in names if k.startswith("out_")],
            dynamic_axes={k: {0: "batch"} for k in names},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    _rename_values(proto.graph, names)
    _declare_shapes(proto.graph, spec)
    if name == "inswapper":
        proto.graph.initializer.append(numpy_helper.from_array(emap_matrix(seed), name="emap"))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    if name == "inswapper":
        if not np.array_equal(load_emap(path), emap_matrix(seed)):
            raise RuntimeError(f"{path.name}: load_emap does not return the appended emap")
    diff = _verify(spec, model, path, seed) if verify else None
    report = ModelReport(
        name=name,
        file=path.name,
        width=width,
        seed=seed,
        params=params,
        stored_values=count_stored(model, name),
        macs=macs,
        onnx_bytes=path.stat().st_size,
        inputs=_io_shapes(proto.graph.input),
        outputs=_io_shapes(proto.graph.output),
        architecture=spec.architecture,
        export_s=round(time.perf_counter() - start, 2),
        max_abs_diff_vs_torch=diff,
        published=spec.published,
    )
    log.info("exported %s: %.2fM params, %.2f GFLOPs, %s", path.name, params / 1e6, report.gflops, path)
    return report


def _rename_values(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (and every node reference to them) by ``names`` old -> new."""
    taken = {v for node in graph.node for v in (*node.input, *node.output)} | {
        i.name for i in graph.initializer
    }
    clash = set(names.values()) & (taken - set(names))
    if clash:
        raise RuntimeError(f"cannot rename to {sorted(clash)}: the exported graph already uses those names")
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(v, v) for v in node.input]
        node.output[:] = [names.get(v, v) for v in node.output]


def _declare_shapes(graph: onnx.GraphProto, spec: Spec) -> None:
    """Declare the contract shapes on the graph's inputs and outputs, batch axis ``batch``: the
    TorchScript exporter leaves made-up symbols (even 'batch' on a spatial axis) where resizes are.
    Its intermediate ``value_info`` shapes go too (onnxruntime infers its own)."""
    del graph.value_info[:]
    shapes = spec.inputs | spec.outputs
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(shapes[value.name]):
            dim = dims.add()
            if i == 0:
                dim.dim_param = "batch"
            else:
                dim.dim_value = size


def _verify(spec: Spec, model: nn.Module, path: Path, seed: int) -> float:
    """Max |onnxruntime - torch| at batch 2 (other inputs than the traced ones)."""
    inputs = _example_inputs(spec, 2, seed + 1)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    session = create_session(path, SessionConfig(providers=("cpu",)))
    got = session.run(None, {n: t.numpy() for n, t in zip(spec.inputs, inputs, strict=True)})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"{path.name}: onnxruntime gives {got.shape}, torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    scale = float(np.max(np.abs(expected))) + 1e-6
    if not diff <= 1e-3 * scale:
        raise RuntimeError(f"{path.name}: onnxruntime and torch differ by {diff:g} (output scale {scale:g})")
    return diff


def export_all(
    out_dir: Path,
    names: Sequence[str] = MODEL_NAMES,
    *,
    width: float = 1.0,
    seed: int = 0,
    verify: bool = True,
) -> list[ModelReport]:
    """Export ``names`` into ``out_dir`` and write ``out_dir/models.json``, keeping the entries of
    other models already listed there (so ``--only`` adds to an earlier export)."""
    reports = [export_model(n, out_dir, width=width, seed=seed, verify=verify) for n in names]
    index = Path(out_dir) / "models.json"
    kept = []
    if index.is_file():
        kept = [m for m in json.loads(index.read_text()).get("models", []) if m.get("name") not in names]
    entries = sorted(kept + [report_dict(r) for r in reports], key=lambda m: MODEL_NAMES.index(m["name"]))
    write_json(index, {"models": entries})
    return reports


def report_dict(report: ModelReport) -> dict[str, object]:
    """JSON form of a report, with derived millions / GMACs / GFLOPs."""
    out = asdict(report)
    out["params_m"] = round(report.params / 1e6, 3)
    out["stored_m"] = round(report.stored_values / 1e6, 3)
    out["gmacs"] = round(report.macs / 1e9, 3)
    out["gflops"] = round(report.gflops, 3)
    return out


TABLE_COLUMNS = (
    ("name", "model"),
    ("params_m", "params (M)", ".2f"),
    ("stored_m", "stored values (M)", ".2f"),
    ("pub_params_m", "published bytes/4 (M)", ".2f"),
    ("gmacs", "GMACs", ".2f"),
    ("gflops", "GFLOPs (2xMAC)", ".1f"),
    ("pub_gflops", "published GFLOPs"),
    ("file_mb", "file (MB)", ".1f"),
    ("pub_file_mb", "published file (MB)", ".1f"),
    ("pub_model", "published model"),
)


def table_rows(reports: Sequence[ModelReport]) -> list[dict[str, object]]:
    """Rows for :data:`TABLE_COLUMNS`: ours next to the published figures (MB = 1e6 bytes)."""
    return [
        {
            **report_dict(r),
            "file_mb": r.onnx_bytes / 1e6,
            "pub_params_m": r.published.params_m,
            "pub_gflops": "n/a" if r.published.gflops is None else r.published.gflops,
            "pub_file_mb": r.published.file_bytes / 1e6,
            "pub_model": r.published.model,
        }
        for r in reports
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--only", choices=MODEL_NAMES, action="append", help="export only NAME (repeatable)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor (1.0 = real model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.width <= 0:
        parser.error("--width must be positive")
    reports = export_all(
        args.out_dir, args.only or MODEL_NAMES, width=args.width, seed=args.seed, verify=not args.no_verify
    )
    sys.stdout.write(format_table(table_rows(reports), TABLE_COLUMNS) + "\n")
    for r in reports:
        sys.stdout.write(f"{r.name}: {r.architecture}\n  published: {r.published.source}\n")
    sys.stdout.write(f"wrote {json.dumps(str(Path(args.out_dir) / 'models.json'))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

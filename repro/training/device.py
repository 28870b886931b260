"""Where and how a run computes: torch's threads, the device, the seeds, and the machine a run records.

Determinism: one seed sets Python, NumPy and torch (model initialisation, dropout) and a dedicated CPU generator
for data order, patches and augmentation, so a seed draws the same batches and transforms on every device. On
CPU with a fixed thread count, the same seed gives bit-identical results on one machine; another CPU can differ in
the last bits, since oneDNN picks its kernels by instruction set (so a run records its machine: :func:`machine`).
On CUDA, cuDNN is held to its deterministic algorithms, but a few backward kernels (bilinear upsampling, adaptive
pooling) have no deterministic CUDA version: PyTorch warns about them and a rerun can differ in the last bits.
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from repro.config import THREADS_ENV

DEVICE_ENV = "UNET_REPRO_DEVICE"


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: the argument, else ``$UNET_REPRO_THREADS``, else one per core."""
    threads = int(threads or os.environ.get(THREADS_ENV) or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def resolve_device(device: str | None = None) -> torch.device:
    """The device to train on: the argument, else ``$UNET_REPRO_DEVICE``, else ``"auto"``.

    ``"auto"`` is the first CUDA GPU when there is one, else the CPU. A named device that is not there fails here,
    before any data is loaded.
    """
    name = device or os.environ.get(DEVICE_ENV) or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(name)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for (argument or ${DEVICE_ENV}) but CUDA is not available")
    return resolved


def describe_device(device: torch.device) -> str:
    """A readable name: ``cpu`` or the GPU's model, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that drives data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global-state users (e.g. third-party code)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # cuBLAS is deterministic only with a fixed workspace; it must be set before its first call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # Every CPU kernel used here is deterministic; on CUDA, the few without a deterministic version warn (see
    # the module docstring) rather than stop the run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def normalise_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: ``cuda`` becomes ``cuda:<current device>`` (``cuda:0`` without CUDA).

    Tensors report an indexed device (``cuda:0``), which never equals a bare ``torch.device("cuda")``: a
    comparison with it would copy data that is already there, and a checkpoint's CUDA RNG state and the recorded
    device would not say which GPU they belong to.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def _cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, str | int | None]:
    """The machine a run computes on: the CPU's model, the instruction set torch's CPU kernels dispatch to
    (``AVX2``, ``AVX512``, ...: the summation order, hence the last bits, follows it), its core count, and the GPU
    when the run trains on one."""
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "gpu": describe_device(device) if device.type == "cuda" else None,
    }

"""Device choice, mixed precision and out-of-memory helpers.

One place decides which accelerator runs a job and how it fails, so the widget,
the CLI and the trainer behave the same on a laptop CPU, an Apple GPU and a
CUDA workstation: ``auto`` prefers CUDA, then Apple MPS, then the CPU; asking
for a device that is not there fails with a message that lists what is.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

ModelT = TypeVar("ModelT", bound=nn.Module)

__all__ = [
    "available_devices",
    "resolve_device",
    "autocast",
    "autocast_dtype",
    "cpu_computes_bf16",
    "inference_dtype",
    "mixed_precision_on",
    "is_out_of_memory",
    "empty_cache",
    "describe_device",
    "memory_format",
    "place_model",
]

#: Phrases of the errors PyTorch / CUDA libraries raise when an allocation fails.
_OOM_PHRASES = (
    "out of memory",  # CUDA caching allocator, MPS ("MPS backend out of memory")
    "can't allocate memory",  # CPU allocator
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "cufft_alloc_failed",
)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Names of the devices usable here, e.g. ``["cuda:0", "cpu"]`` (CPU always last)."""
    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a user-facing device name into a ``torch.device`` that exists.

    Parameters
    ----------
    name
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cuda"``, ``"cuda:1"``,
        ``"mps"``, ``"cpu"`` or a ``torch.device``.

    Raises
    ------
    ValueError
        For an unknown name, or an accelerator this machine does not have
        (the message lists the available ones, so the user can pick one).
    """
    if isinstance(name, torch.device):
        text = str(name)
    else:
        text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"unknown device {name!r}; use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu' "
            f"(available here: {', '.join(available_devices())})"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available here "
                f"(available: {', '.join(available_devices())}); use 'auto' or 'cpu', "
                "or install a CUDA build of PyTorch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} asked for, but this machine has {count} CUDA device(s) "
                f"(available: {', '.join(available_devices())})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {name!r} asked for, but Apple MPS is not available here "
                f"(available: {', '.join(available_devices())}); use 'auto' or 'cpu'"
            )
        return device
    raise ValueError(
        f"device type {device.type!r} is not supported; use 'auto', 'cuda', 'mps' or 'cpu' "
        f"(available here: {', '.join(available_devices())})"
    )


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def autocast_dtype(device: str | torch.device, enabled: bool = True) -> torch.dtype | None:
    """The reduced precision :func:`autocast` uses on ``device``, or ``None`` (full precision).

    On a GPU bfloat16 when it supports it (same range as float32: no loss scaling
    needed), else float16 (the trainer then needs a ``GradScaler``). On a CPU
    bfloat16 only where it has bf16 instructions (:func:`cpu_computes_bf16`);
    elsewhere CPU autocast emulates bf16 and is slower. MPS runs in float32: its
    support is still partial, so mixed precision there costs more than it gains.
    """
    device = _as_device(device)
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_computes_bf16() else None
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX tiles).

    Why it matters: there oneDNN runs bf16 convolutions at about twice the fp32 rate
    (UNet++ L4 tiled, paper widths, 2 cores: 8.17 -> 3.81 s/Mpx, docs/benchmarks.md);
    without them bf16 is emulated and slower than fp32.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def inference_dtype(device: str | torch.device, enabled: bool = True) -> torch.dtype:
    """The dtype a prepared inference copy holds its weights in (and its tiles are cast to).

    bfloat16 on a CPU that computes it in hardware when mixed precision is on
    (:func:`cpu_computes_bf16`): the whole frozen network in bf16 beat autocast by
    20 % there (one measurement, under load), as autocast re-casts every weight on every
    call. float32 elsewhere: CUDA runs float32 weights under :func:`autocast`, and MPS
    stays in full precision.
    """
    device = _as_device(device)
    if device.type == "cpu" and autocast_dtype(device, enabled) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def mixed_precision_on(device: str | torch.device, enabled: bool, spatial_dims: int) -> bool:
    """Whether mixed precision is used for a network of ``spatial_dims`` on ``device``.

    On a CPU for 2D networks only: CPU bf16 autocast gave non-finite gradients in 10-18
    of 30 tiny 3D training runs (oneDNN's 3D bf16 backward; none in 30 2D runs), and
    bf16's speed and accuracy were measured on 2D models only. GPUs: as asked.
    """
    return enabled and (_as_device(device).type != "cpu" or spatial_dims == 2)


@contextlib.contextmanager
def autocast(device: str | torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision in :func:`autocast_dtype`'s precision (CUDA; a CPU with bf16
    instructions); a no-op elsewhere.

    Wrap only the forward pass and the loss; the backward pass and the
    optimizer step run outside, as PyTorch recommends.
    """
    dtype = autocast_dtype(device, enabled)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=_as_device(device).type, dtype=dtype):
        yield


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means an allocation failed (so a smaller batch/tile may succeed).

    Covers ``torch.OutOfMemoryError`` (CUDA), MPS and CPU allocator errors, the
    cuDNN/cuBLAS allocation failures that surface as plain ``RuntimeError``, and
    Python's ``MemoryError`` (numpy buffers).
    """
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", None
    )
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


def empty_cache(device: str | torch.device) -> None:
    """Return cached accelerator memory to the driver (after an OOM or a big job).

    Runs the garbage collector first so tensors only referenced from a dropped
    traceback are freed before the cache is emptied. Does nothing on the CPU
    beyond that.
    """
    device = _as_device(device)
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache"):
            mps.empty_cache()


def describe_device(device: str | torch.device) -> str:
    """One line for logs and the widget: ``"CUDA: NVIDIA H100 (80 GB)"``, ``"CPU (2 threads)"``."""
    device = _as_device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA (not available)"
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gigabytes = props.total_memory / 1e9
        return f"CUDA: {props.name} ({gigabytes:.0f} GB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return str(device)


def place_model(net: ModelT, device: torch.device | str | None = None) -> ModelT:
    """``net`` on ``device`` (default: where it is) in the layout of :func:`memory_format`."""
    target = torch.device(device) if device is not None else next(net.parameters()).device
    fmt = memory_format(int(getattr(net, "spatial_dims", 2)), target)
    # Module.to accepts memory_format at runtime; torch's type overloads leave it out
    return net.to(target, memory_format=fmt)  # type: ignore[call-overload,no-any-return]


def memory_format(spatial_dims: int, device: torch.device) -> torch.memory_format:
    """The layout convolutions run fastest in on ``device``.

    channels_last on CUDA (tensor cores want NHWC) and for 2D on the CPU too, where
    oneDNN's NHWC kernels measured 1.2-1.7x faster than NCHW at every depth of the
    paper widths (benchmarks/bench_speed.py), and training steps 1.2x faster; 3D stays
    contiguous on the CPU (not measured). Inference and training share this choice.
    """
    if device.type == "cuda":
        return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    if device.type == "cpu" and spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format

"""Device resolution, mixed precision, out-of-memory detection, descriptions.

GPU paths are exercised by faking what ``torch.cuda`` reports; the ``gpu``
marked test checks the real thing where CUDA exists.
"""

from __future__ import annotations

import pytest
import torch

from napari_unetpp import devices
from napari_unetpp.devices import (
    autocast,
    autocast_dtype,
    available_devices,
    describe_device,
    empty_cache,
    is_out_of_memory,
    resolve_device,
)


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_cpu_and_auto_without_accelerators(no_accelerators):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert available_devices() == ["cpu"]


@pytest.mark.parametrize("name, what", [("cuda", "CUDA"), ("cuda:1", "CUDA"), ("mps", "MPS")])
def test_missing_accelerator_says_what_is_available(no_accelerators, name, what):
    with pytest.raises(ValueError, match=what) as info:
        resolve_device(name)
    assert "available: cpu" in str(info.value)


def test_unknown_device_name_lists_choices(no_accelerators):
    with pytest.raises(ValueError, match="'auto', 'cuda'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")


def test_auto_prefers_cuda_then_mps(monkeypatch, fake_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert available_devices() == ["mps", "cpu"]


def test_autocast_dtype_choice(monkeypatch, fake_cuda):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda:0")) == torch.float16
    assert autocast_dtype("cuda", enabled=False) is None
    assert autocast_dtype("mps") is None


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_autocast_follows_the_cpus_bf16_instructions(monkeypatch, has_bf16: bool):
    """bf16 on a CPU with bf16 instructions (about twice the float32 rate there); a no-op
    on any other CPU, where bf16 would be emulated and slower, and when disabled."""
    from napari_unetpp import devices

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: has_bf16)
    assert autocast_dtype("cpu") == (torch.bfloat16 if has_bf16 else None)
    assert autocast_dtype("cpu", enabled=False) is None
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu"):
        y = layer(x)
        assert torch.is_autocast_enabled("cpu") == has_bf16
    assert y.dtype == (torch.bfloat16 if has_bf16 else torch.float32)
    with autocast(torch.device("cpu"), enabled=False):
        assert layer(x).dtype == torch.float32


@pytest.mark.parametrize(
    "exc, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
            True,
        ),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (MemoryError(), True),
        (RuntimeError("Given groups=1, weight of size [4, 1, 3, 3], expected input"), False),
        (ValueError("out of memory"), False),  # not an allocation error type
        (KeyError("x"), False),
    ],
)
def test_is_out_of_memory(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_is_out_of_memory_on_a_real_cpu_allocation_failure():
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except (RuntimeError, MemoryError) as exc:
        assert is_out_of_memory(exc)
    else:  # pragma: no cover - no machine has 4 EiB
        pytest.fail("allocation of 4 EiB succeeded")


def test_empty_cache_and_describe_on_cpu():
    empty_cache("cpu")
    empty_cache(torch.device("cpu"))
    text = describe_device("cpu")
    assert text.startswith("CPU (") and "thread" in text
    assert describe_device("mps") == "Apple GPU (MPS)"


def test_describe_fake_cuda(monkeypatch, fake_cuda):
    class Props:
        name = "NVIDIA H100 80GB HBM3"
        total_memory = 80 * 10**9

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props())
    assert describe_device("cuda") == "CUDA: NVIDIA H100 80GB HBM3 (80 GB)"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_autocast_and_description():  # pragma: no cover - GPU machines only
    device = resolve_device("cuda")
    layer = torch.nn.Conv2d(1, 4, 3).to(device)
    with autocast(device):
        y = layer(torch.randn(1, 1, 8, 8, device=device))
    assert y.dtype == autocast_dtype(device)
    assert describe_device(device).startswith("CUDA: ")
    empty_cache(device)


def test_cpu_mixed_precision_is_for_2d_networks_only(monkeypatch):
    """CPU bf16 autocast gave non-finite gradients in 10-18 of 30 tiny 3D training runs
    (none in 2D): 3D networks keep float32 on a CPU, for training and for inference."""
    from napari_unetpp import devices
    from napari_unetpp.model import UNetPlusPlus
    from napari_unetpp.predictor import network_dtype, prepare_on

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    assert devices.mixed_precision_on("cpu", True, 2)
    assert not devices.mixed_precision_on("cpu", True, 3)
    assert not devices.mixed_precision_on("cpu", False, 2)
    assert devices.mixed_precision_on("cuda", True, 3)
    cpu = torch.device("cpu")
    for dims, wanted in ((2, torch.bfloat16), (3, torch.float32)):
        net = UNetPlusPlus(widths=(4, 8), depth=1, spatial_dims=dims)
        prepared, _, _ = prepare_on(net, cpu, True)
        assert network_dtype(prepared) == wanted, dims

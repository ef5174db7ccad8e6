"""Device and mixed-precision helpers of IGUANe (harmonix.iguane.devices)."""

from __future__ import annotations

import pytest
import torch

from harmonix.iguane import devices as V

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_resolve_device():
    assert V.resolve_device("cpu").type == "cpu"
    assert V.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        V.resolve_device("tpu")


def test_resolve_amp_dtype(monkeypatch):
    assert V.resolve_amp_dtype(None, CUDA) is None
    assert V.resolve_amp_dtype("auto", CUDA) is torch.float16
    assert V.resolve_amp_dtype("bfloat16", CPU) is torch.bfloat16
    assert V.resolve_amp_dtype(torch.float16, CUDA) is torch.float16
    monkeypatch.setattr(V, "cpu_supports_bf16", lambda: False)
    assert V.resolve_amp_dtype("auto", CPU) is None
    monkeypatch.setattr(V, "cpu_supports_bf16", lambda: True)
    assert V.resolve_amp_dtype("auto", CPU) is torch.bfloat16
    with pytest.raises(ValueError, match="amp_dtype"):
        V.resolve_amp_dtype(torch.float32, CPU)
    with pytest.raises(ValueError, match="amp_dtype"):
        V.resolve_amp_dtype("half", CPU)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False),
        ({}, False),
    ],
)
def test_cpu_supports_bf16_reads_the_capabilities(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert V.cpu_supports_bf16() is expected


def test_cpu_supports_bf16_is_false_when_probing_fails(monkeypatch):
    def broken() -> dict:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "get_capabilities", broken, raising=False)
    assert V.cpu_supports_bf16() is False


@pytest.mark.parametrize(
    ("mixed", "device", "name", "expected"),
    [
        (None, CPU, None, None),  # None: on CUDA only
        (None, CUDA, None, torch.float16),
        (True, CPU, None, torch.bfloat16),
        (True, CPU, "float16", torch.float16),
        (True, CUDA, "bfloat16", torch.bfloat16),
        (False, CUDA, "float16", None),
    ],
)
def test_autocast_dtype(mixed, device, name, expected):
    assert V.autocast_dtype(mixed, device, name) is expected

"""What the benchmarks ran on: CPU, cores, GPU, versions, load, and FLOP estimates."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch
from torch import nn

from speedsign.machine import VECTOR_FLAGS, cpu_flags, cpu_model, isa_limits, usable_cores

__all__ = ["VECTOR_FLAGS", "cpu_flags", "cpu_model", "usable_cores"]

# Dense bf16 tensor-core peak (TFLOP/s) by GPU name, from the vendors' data sheets; a GPU not
# listed gets no "fraction of peak" rather than a guess. Checked in order: first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def gpu_info() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "count": torch.cuda.device_count(),
            "memory_gb": round(props.total_memory / 1024**3, 1),
            "peak_bf16_tflops": peak_bf16_tflops(props.name)}


def machine_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_isa_limits": isa_limits(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_gb(),
        "gpu": gpu_info(),
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": load_average(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    gpu = info.get("gpu")
    gpu_text = f"{gpu['name']} x{gpu['count']} ({gpu['memory_gb']} GB)" if gpu else "no GPU"
    load = info.get("load_average")
    flags = " ".join(info.get("cpu_flags") or []) or "no flags read"
    limits = " ".join(f"{k}={v}" for k, v in (info.get("cpu_isa_limits") or {}).items())
    return (f"{info['cpu']} [{flags}{'; ' + limits if limits else ''}], "
            f"{info['cores']} cores ({info['usable_cores']} usable, "
            f"{info['torch_threads']} torch threads), {info.get('memory_gb')} GB RAM, {gpu_text}; "
            f"device {info['device']}; torch {info['torch']}; load average "
            f"{' '.join(str(v) for v in load) if load else 'n/a'}")


def peak_bf16_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def forward_flops(model: nn.Module, *, img_size: int) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts 2), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, *, n: int = 2048, repeats: int = 10) -> float:
    """This machine's dense matmul rate (TFLOP/s) for `dtype`, with training's threads: the best of
    `repeats` n x n products. What a data sheet cannot say for a CPU: its cores, clock and ISA here."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):  # warm-up: threads, kernels, caches, clocks
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e12


def achieved(flops_per_image: float, images_per_s: float, device: torch.device, *,
             peak_tflops: float | None = None, peak_dtype: str | None = None) -> dict[str, Any]:
    """Achieved TFLOP/s; its fraction of the measured matmul peak (`peak_tflops`, for the dtype
    that side trains in); and on a known GPU the fraction of its data-sheet dense bf16 peak."""
    tflops = flops_per_image * images_per_s / 1e12
    result: dict[str, Any] = {"tflops": round(tflops, 4)}
    if peak_tflops:
        result.update(fraction_of_peak=round(tflops / peak_tflops, 4), peak_tflops=round(peak_tflops, 4),
                      peak_dtype=peak_dtype)
    if device.type == "cuda":
        peak = peak_bf16_tflops(torch.cuda.get_device_name(device))
        if peak:
            result["fraction_of_bf16_peak"] = round(tflops / peak, 5)
            result["peak_bf16_tflops"] = peak
    return result

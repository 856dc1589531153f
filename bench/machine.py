"""What the benchmarks ran on: CPU, cores, GPU, versions, load, and FLOP estimates."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch
from torch import nn

# Dense bf16 tensor-core peak (TFLOP/s) by GPU name, from the vendors' data sheets; a GPU not
# listed gets no "fraction of peak" rather than a guess. Checked in order: first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what CPU kernels can use


def cpu_flags() -> list[str]:
    """The CPU's vector extensions among VECTOR_FLAGS (Linux /proc/cpuinfo), in that order.

    A figure means little without them: the same 2 cores train about 5x faster with AVX512-BF16
    than with AVX2 alone. ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA, when set, are reported too.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in VECTOR_FLAGS if flag in present]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
        "cpu_isa_limits": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
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


def achieved(flops_per_image: float, images_per_s: float, device: torch.device) -> dict[str, Any]:
    """Achieved TFLOP/s, and on a known GPU the fraction of its dense bf16 peak."""
    tflops = flops_per_image * images_per_s / 1e12
    result: dict[str, Any] = {"tflops": round(tflops, 4)}
    if device.type == "cuda":
        peak = peak_bf16_tflops(torch.cuda.get_device_name(device))
        if peak:
            result["fraction_of_bf16_peak"] = round(tflops / peak, 5)
            result["peak_bf16_tflops"] = peak
    return result

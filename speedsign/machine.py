"""Facts about this machine that a figure or a time budget depends on (no torch needed)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import sys

VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what CPU kernels can use
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # environment that caps torch's kernels


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's vector extensions among VECTOR_FLAGS (Linux /proc/cpuinfo), in that order.

    A figure means little without them: the same 2 cores train about 5x faster with AVX512-BF16
    than with AVX2 alone.
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


def isa_limits() -> dict[str, str]:
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA when set: they make a fast CPU act as a slower one."""
    return {name: os.environ[name] for name in ISA_LIMITS if name in os.environ}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_key(device: str) -> str:
    """A short name of what sets training speed here: CPU model, flags, ISA limits, cores, device.

    A time budget plans different steps on different machines, so a budgeted run's id includes it.
    """
    facts = "|".join([cpu_model(), " ".join(cpu_flags()), repr(sorted(isa_limits().items())),
                      str(usable_cores()), device])
    return hashlib.sha256(facts.encode()).hexdigest()[:12]


def describe_machine() -> str:
    """One line for a model card or a figure: CPU model, vector flags, ISA limits, usable cores."""
    limits = " ".join(f"{k}={v}" for k, v in sorted(isa_limits().items()))
    parts = [cpu_model(), " ".join(cpu_flags()) or "no AVX2", limits, f"{usable_cores()} usable cores"]
    return ", ".join(part for part in parts if part)


M_ARENA_MAX = -8  # glibc's mallopt parameter number for the arena cap
APP_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = APP_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas in this process; whether it applied (glibc Linux only).

    Streamlit serves each browser session from threads of its own, and glibc gives threads new
    arenas (up to 8 per core) that keep freed memory: measured on the app serving the shipped
    models, two arenas hold 75 MB less after 6 sessions (764 -> 689 MB) at no speed cost. The
    same as MALLOC_ARENA_MAX=2 in the environment, which a Community Cloud app cannot set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def process_age() -> float:
    """Seconds since this process started (Linux /proc), or 0.0 where that cannot be read.

    A time budget covers the whole command, the interpreter's start and imports included."""
    try:
        with open("/proc/self/stat", encoding="ascii") as file:
            ticks = int(file.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        with open("/proc/uptime", encoding="ascii") as file:
            uptime = float(file.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0

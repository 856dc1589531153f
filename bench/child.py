"""Run `python -m speedsign ...` and report this process's own peak RSS.

`python -m bench.child OUT_FILE [speedsign arguments]`. The peak comes from VmHWM in
/proc/self/status: the high-water mark of this process's memory since exec. ru_maxrss is
no good here: Linux carries the parent's RSS over into a child's ru_maxrss at fork/exec,
so every child of a big benchmark process would report at least the benchmark's size.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
from pathlib import Path

# What `speedsign train` imports before it trains (torch & co come with them).
TRAIN_IMPORTS: tuple[str, ...] = ("speedsign.cli", "speedsign.job")


def peak_rss_mb() -> tuple[float, str]:
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "VmHWM"
    except (OSError, ValueError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**2, "ru_maxrss"


def main(argv: list[str]) -> int:
    out, args = Path(argv[0]), argv[1:]
    code = 1
    try:
        if args:
            from speedsign.cli import main as speedsign_main

            code = speedsign_main(args)
        else:  # no command: only the imports, the floor under every training's peak
            for name in TRAIN_IMPORTS:
                importlib.import_module(name)
            code = 0
    finally:
        peak, method = peak_rss_mb()
        out.write_text(json.dumps({"peak_rss_mb": round(peak, 1), "method": method}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One line describing the machine a benchmark or report ran on."""

from __future__ import annotations

import os
import platform


def describe() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:  # the CPU model alone does not tell machines of one cloud family apart
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as fh:
            cpu += f" (L3 {fh.read().strip()})"
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for mod in ("torch", "mujoco"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    gl = os.environ.get("MUJOCO_GL", "default")
    if "LP_NUM_THREADS" in os.environ:
        gl += f", LP_NUM_THREADS={os.environ['LP_NUM_THREADS']}"
    return (f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, {', '.join(versions)}, MUJOCO_GL={gl}")

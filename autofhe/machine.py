"""What this machine gives the process: its cores (CPU affinity and a container's CPU quota
both count, which ``os.cpu_count()`` ignores)."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores"]

#: cgroup v2's CPU quota ("max 100000" or "150000 100000": quota and period, microseconds)
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CPU_MAX) -> int:
    """Cores this process may run on: the CPUs it is pinned to (``taskset``, a scheduler's
    affinity), capped by a container's CPU quota (``docker --cpus 1.5`` gives 2), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return max(1, cores)

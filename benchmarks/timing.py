"""What the environment benchmarks share: the timing loop, and the machine description saved with the rates.

The scripts beside this module run as `python benchmarks/bench_*.py`, so they find it on their own folder's path.
"""

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def best_rate(run: Callable[[], int], seconds: float, repeats: int = 3) -> float:
    """Largest units/s over `repeats` timings of `run` (which returns the units it did) for ~`seconds` each."""
    rates = []
    for _ in range(repeats):
        units, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            units += run()
        rates.append(units / (time.perf_counter() - start))
    return max(rates)


def machine_info() -> dict[str, Any]:
    """The machine a benchmark ran on, for its JSON: cores, processor, Python and numpy versions, load."""
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        # Other processes share the cores; a load above the core count deflates every rate.
        "load_average_1min": os.getloadavg()[0],
    }

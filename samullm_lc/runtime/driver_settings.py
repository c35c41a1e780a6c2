"""The driver's settings: planner, re-planning threshold, per-engine limits, polling; checked when the pool is
made, so a value that would hang the run fails at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samullm_lc.errors import ConfigError
from samullm_lc.planner import check_planner
from samullm_lc.planner.planners import DEFAULT_PLANNER


@dataclass(slots=True)
class DriverSettings:
    """Knobs of the driver loop; checked when made (a value that would hang the pool is a ``ConfigError``)."""

    planner: str = DEFAULT_PLANNER
    replan_threshold: float = 0.25
    max_in_flight: int = 512
    max_attempts: int = 3
    max_engine_failures: int = 3
    poll_seconds: float = 0.2
    min_replan_seconds: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_planner(self.planner)
        for name in ("max_in_flight", "max_attempts", "max_engine_failures"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name in ("replan_threshold", "poll_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < np.inf:
                raise ConfigError(f"{name} must be a positive number of seconds or a fraction, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number of at least 0 (numpy's generators take no negative "
                              f"seeds), got {self.seed!r}")

"""A measured engine profile: what ``samullm profile`` learns about one (model, hardware, TP) and saves.

It carries everything the cost model needs to predict that engine without running it: the scheduling
limits the engine really used, the fitted step latency, the measured load time and the model's observed
output-length distribution.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from samullm_lc.costmodel.architecture import ModelArchitecture
from samullm_lc.costmodel.latency.linear import FitQuality, LinearLatencyModel
from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.scheduler_config import SchedulerConfig
from samullm_lc.errors import ProfileError
from samullm_lc.user_files import read_user_text, write_private
from samullm_lc.validated import ValidatedModel


class EngineProfile(ValidatedModel):
    """Measured facts about one engine configuration; JSON round-trip."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model as it was given to the engine (folder or id).")
    architecture: ModelArchitecture
    hardware: str
    tensor_parallel_size: int = 1
    scheduler: SchedulerConfig
    latency: LinearLatencyModel
    fit: FitQuality
    load_seconds: float = Field(ge=0, description="Engine start: weights, KV-cache allocation, warm-up.")
    process_start_seconds: float | None = Field(
        None, ge=0, description="What a process's first engine start takes on top of load_seconds (importing "
        "vLLM and what it loads lazily); None if the profiling process had imported vLLM before.",
    )
    output_lengths: OutputLengthDistribution | None = None
    engine: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    measured_steps: list[tuple[float, float, float, float, float, float]] = Field(
        default_factory=list, description="The fitted steps: the five features, then seconds (for refits)."
    )

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (mode 0600, like every file samullm_lc writes for a user)."""
        return write_private(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        """Read a profile written by ``save``; ``ProfileError`` naming the file if it cannot be read or is not one."""
        text = read_user_text(path, what="engine profile", fix="create it with `samullm profile`",
                              error=ProfileError)
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            raise ProfileError(f"profile {path} is not a samullm_lc engine profile: {exc}") from exc

"""One model's output tokens over the run, in fixed-width time bins that stay few however long the run.

The run recorder adds each finished request's output tokens to the bin of its finish time. Bins start
``INITIAL_BIN_SECONDS`` wide; when a finish falls past ``MAX_BINS`` bins, neighbouring bins are added up in
pairs and the width doubles, as often as needed. So a model's series is at most ``MAX_BINS`` numbers whether
the run took ten seconds on the CPU engine or ten hours of 100,000 requests on GPUs, and every token stays
counted: the bins always add up to the tokens added. Every model's bins start at the same width and double
on the same ladder, so two series line up after ``coarsened`` to a common width.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

INITIAL_BIN_SECONDS = 0.1
"""The width of a series' bins before any doubling (a tiny run on the CPU engine lasts seconds)."""
MAX_BINS = 512
"""A series never holds more bins than this; past it, pairs of bins are merged and the width doubles."""


class TokenTimeline(BaseModel):
    """Output tokens of one model's requests by when they finished: bin ``i`` covers backend seconds
    ``[i * bin_seconds, (i + 1) * bin_seconds)``, on the clock of the report's engine spans and finish times."""

    bin_seconds: float = Field(INITIAL_BIN_SECONDS, gt=0, description="Width of each bin, seconds.")
    output_tokens: list[int] = Field(default_factory=list, description=(
        f"Output tokens of the requests that finished in each bin (at most {MAX_BINS} bins)."))

    def add(self, at_seconds: float, tokens: int) -> None:
        """Count ``tokens`` output tokens finished at backend time ``at_seconds``; widen the bins first if it
        falls past the last one allowed."""
        index = int(max(at_seconds, 0.0) / self.bin_seconds)
        while index >= MAX_BINS:
            self._double()
            index = int(max(at_seconds, 0.0) / self.bin_seconds)
        bins = self.output_tokens
        if index >= len(bins):
            bins.extend([0] * (index + 1 - len(bins)))
        bins[index] += tokens

    def _double(self) -> None:
        """Merge each pair of neighbouring bins and double the width."""
        bins = self.output_tokens
        self.output_tokens = [sum(bins[i:i + 2]) for i in range(0, len(bins), 2)]
        self.bin_seconds *= 2

    @property
    def total_tokens(self) -> int:
        """Every token counted."""
        return sum(self.output_tokens)

    def coarsened(self, min_bin_seconds: float) -> TokenTimeline:
        """A copy whose bins are at least ``min_bin_seconds`` wide (doubled as often as needed): for a chart of a
        few dozen points, and to line several models' series up on one width."""
        copy = self.model_copy(update={"output_tokens": list(self.output_tokens)})
        while copy.bin_seconds < min_bin_seconds * (1 - 1e-9):
            copy._double()
        return copy

    def tokens_per_second(self) -> list[tuple[float, float]]:
        """Each bin as (its start, seconds; its output tokens per second)."""
        return [(index * self.bin_seconds, tokens / self.bin_seconds) for index, tokens in enumerate(self.output_tokens)]


__all__ = ["INITIAL_BIN_SECONDS", "MAX_BINS", "TokenTimeline"]

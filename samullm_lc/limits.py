"""The largest sizes samullm_lc accepts, each with the reason: no input may exhaust memory or hang a run.

Each limit is checked where the library takes the size (the cost model, the simulator, the planner, the
cluster, the app graph, the demo app), so the command line and a Python caller get the same ``ConfigError``,
which names the size, the limit, why it is there and what to do instead. The measurements behind the
numbers are in docs/cost-model.md#limits (one core of this machine; other machines differ by a small factor).
"""

from __future__ import annotations

from dataclasses import dataclass

from samullm_lc.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Limit:
    """An inclusive range for one size, and why its maximum is what it is (with what to do instead)."""

    what: str  # the size, as a user would name it: "requests in one estimate"
    maximum: int
    reason: str
    minimum: int = 1

    def check(self, value: int) -> int:
        """``value`` unchanged if it lies in the range, else a ``ConfigError`` naming it, the range and the reason."""
        if value < self.minimum:
            raise ConfigError(f"{self.what} must be at least {self.minimum:,}, got {value:,}")
        if value > self.maximum:
            raise ConfigError(f"{self.what}: {value:,} is over the limit of {self.maximum:,}; {self.reason}")
        return value


REQUESTS_PER_ESTIMATE = Limit(
    "requests in one estimate", 1_000_000,
    "the simulator keeps about 240 bytes per request and 120 per engine step (a million requests of 512 prompt "
    "and 256 output tokens: 0.4 GB and 10 s per sample). For a larger set, estimate a part of it and scale up: "
    "once the engine's batch is full, the time grows in proportion to the requests",
)
SIMULATED_STEPS = Limit(
    "engine steps of one simulated request set", 10_000_000,
    "pricing the steps takes about 120 bytes each (1.2 GB at the limit). A request set needs this many steps "
    "when few of its requests fit the KV cache at once: estimate fewer requests and scale up, or give the "
    "engine more memory (a higher tensor-parallel degree, larger GPUs)",
)
OUTPUT_LENGTH_SAMPLES = Limit(
    "output-length samples of one estimate", 100,
    "each sample simulates the whole request set once more (about 10 microseconds per request), and more "
    "barely move the median (1,000 requests: it varies by 0.3% between seeds at 5 samples, 0.1% at 100)",
)
PLAN_SAMPLES = Limit(
    "output-length samples to plan on", 20,
    "the planner plans once per sample and replays every plan on every sample (samples squared replays: 400 "
    "at the limit, each as long as one plan's estimate)",
)
CURVE_BATCHES = Limit(
    "batches each candidate simulation keeps (curve batches)", 100,
    "24 batches are already within 4% of the full simulation (docs/results/planner-curve-accuracy.md); more "
    "only make planning slower, up to a full simulation of every candidate",
)
CLUSTER_DEVICES = Limit(
    "devices in a cluster", 1_024,
    "planning time grows faster than the device count (the ensemble app: 1.4 s on 64 GPUs, 5 s on 1,024, "
    "34 s on 4,096; on 100,000 it did not finish in a minute). Plan a larger fleet as independent clusters",
)
TOKENS_PER_REQUEST = Limit(
    "tokens of one request (prompt or max_tokens)", 10_000_000,
    "that is longer than any model's context window (the catalogue's longest is 131,072 tokens); a larger "
    "count is a typo",
)
DEMO_QUESTIONS = Limit(
    "questions in the demo app", 10_000,
    "the demo runs real engines on this machine's cores (300 requests per model take 34 s here, so 10,000 "
    "questions take the better part of an hour); for a larger run, write an app graph and use `samullm run`",
)
USER_FILE_BYTES = Limit(
    "bytes of a file samullm_lc reads (app graph, model config, engine profile)", 100_000_000,
    "loading takes about 17 times the file's size in memory (an app graph of 10 million requests, 55 MB, "
    "takes 0.9 GB), so this keeps a load under about 2 GB; split a larger app into several",
    minimum=0,
)

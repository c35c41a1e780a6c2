"""What the runtime knows mid-run, handed to ``replan`` to plan the rest of the application.

The runtime calls ``replan`` as batches finish: requests done so far (and the output lengths they had),
the engine each model is running, output-length distributions refined from what was observed, and the
load times it measured. The new plan starts at the time of the call (time 0 of the plan).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.errors import ConfigError
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.plan import ExecutionPlan
from samullm_lc.validated import ValidatedModel


class RunState(ValidatedModel):
    """The state of a partly finished run; JSON round-trip."""

    model_config = ConfigDict(extra="forbid")

    finished: dict[str, list[int]] = Field(default_factory=dict, description="Per node, indices of finished requests.")
    output_tokens: dict[str, dict[int, int]] = Field(
        default_factory=dict, description="Per node, observed output tokens of finished requests (by index)."
    )
    engines: dict[str, ExecutionPlan | None] = Field(
        default_factory=dict, description="Per model, the engine running now (None: not loaded)."
    )
    output_lengths: dict[str, OutputLengthDistribution] = Field(
        default_factory=dict, description="Per model, the output-length distribution refined from observations."
    )
    load_seconds: dict[str, dict[int, float]] = Field(
        default_factory=dict, description="Per model and tensor-parallel degree, measured engine start seconds."
    )
    elapsed_seconds: float = Field(0.0, ge=0, description="Time since the run started (informative).")

    def check(self, app: AppGraph) -> None:
        """Raise ConfigError if the state names nodes, requests or models the app does not have."""
        names = {n.name for n in app.nodes}
        for field_name, per_node in (("finished", self.finished), ("output_tokens", self.output_tokens)):
            for node, requests in per_node.items():
                if node not in names:
                    raise ConfigError(f"run state {field_name}: app {app.name!r} has no node {node!r}")
                count = app.node(node).num_requests
                bad = [r for r in requests if not 0 <= int(r) < count]
                if bad:
                    raise ConfigError(
                        f"run state {field_name}: node {node!r} has {count} requests, "
                        f"indices {bad[:5]} are out of range"
                    )
        models = set(app.models())
        for field_name, per_model in (("engines", self.engines), ("output_lengths", self.output_lengths),
                                      ("load_seconds", self.load_seconds)):
            unknown = sorted(set(per_model) - models)
            if unknown:
                raise ConfigError(f"run state {field_name}: models {unknown} are not in app {app.name!r}")
        for model, plan in self.engines.items():
            if plan is not None and plan.model != model:
                raise ConfigError(f"run state engines: the plan under {model!r} is for {plan.model!r}")

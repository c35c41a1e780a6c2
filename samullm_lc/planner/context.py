"""Everything one planning run shares: the sampled workload, the cluster, each model's options and curves.

Built once per (app, cluster, output-length sample); the planners, the stage model and the faithful
replay all read from it. Models that fit nowhere fail here, before any search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.lengths import OutputLengthDistribution
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.graph.app_graph import AppGraph
from samullm_lc.planner.cluster import Cluster
from samullm_lc.planner.curves import BATCHES_SIMULATED, ModelCurves, model_curves
from samullm_lc.planner.node_parts import Reads
from samullm_lc.planner.options import EngineOption, ModelOptions, build_model_options
from samullm_lc.planner.scale_model import shrinkable
from samullm_lc.planner.workload import Workload, sample_workload


@dataclass(slots=True)
class PlanningSettings:
    """Switches of the plan space, and how long each candidate simulation runs."""

    allow_sharing: bool = True
    allow_replicas: bool = True
    curve_batches: int = BATCHES_SIMULATED  # batches each candidate simulation keeps (``curves.fit_curve``)
    cold_start: bool = True  # no worker process is up yet: the first stage's engines each start one


@dataclass(slots=True)
class PlanningContext:
    """The shared inputs of one planning run, with per-node arrays for the hot loops."""

    app: AppGraph
    cluster: Cluster
    settings: PlanningSettings
    workload: Workload
    model_options: dict[str, ModelOptions]  # per model: its feasible options and their costs
    curves: dict[str, ModelCurves]
    total_tokens: np.ndarray  # per node: tokens of its requests still to run when planning starts
    flops_per_token: np.ndarray  # per node
    node_model: list[str]
    upstream: list[tuple[int, ...]]  # per node, the nodes it reads (a node-level DAG: loops are split)
    reads: list[Reads]  # per node, its request-level edges (``node_parts.py``)
    engine_scale: int = 1  # the replay runs a scale model: engines this many times smaller (``scale_model.py``)
    longest_tokens: dict[str, int] = field(default_factory=dict)  # per model, its longest sampled sequence (tokens)
    stage_cache: dict[tuple, tuple[int, ...]] = field(default_factory=dict)  # memo of stages.stage_nodes
    membership: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # models x nodes: 1 if the node's model

    @property
    def num_nodes(self) -> int:
        """Planner nodes: the app's nodes, a node in a loop counted once per call depth."""
        return len(self.node_model)

    def app_node_parts(self, name: str) -> list[int]:
        """The planner nodes of an app node (one unless it is in a loop)."""
        return self.workload.app_nodes[name]

    @property
    def models(self) -> list[str]:
        """Distinct models, in first-use order."""
        return self.workload.models

    def model_nodes(self, model: str) -> list[int]:
        """Indices of the model's nodes, in topological order."""
        return self.workload.model_nodes[model]

    def options(self, model: str) -> list[EngineOption]:
        """Every option the model may run with on this cluster."""
        return self.curves[model].options

    def process_start_seconds(self, model: str, *, first_stage: bool) -> float:
        """Extra start-up of ``model``'s engine when it needs a new worker process (importing vLLM).

        In a plan made from scratch (``cold_start``) the first stage's engines do; later engines reuse the
        process of an engine that stopped, as the runtime's pool does. CPU engines only: a GPU load time
        (analytic or profiled) includes the start-up.
        """
        return self.model_options[model].process_start_seconds if self.settings.cold_start and first_stage else 0.0

    def model_work(self, remaining: np.ndarray) -> np.ndarray:
        """Tokens left per model (in ``models`` order) given tokens left per node."""
        return self.membership @ remaining


def build_app_options(
    app: AppGraph,
    cluster: Cluster,
    *,
    profiles: dict[str, EngineProfile] | None = None,
    output_lengths: dict[str, OutputLengthDistribution] | None = None,
    load_seconds: dict[str, dict[int, float]] | None = None,
) -> dict[str, ModelOptions]:
    """The options of every model of the app; DoesNotFitError for a model that fits nowhere."""
    return {
        model: build_model_options(
            model, cluster, profile=(profiles or {}).get(model), output_lengths=(output_lengths or {}).get(model),
            load_overrides=(load_seconds or {}).get(model),
        )
        for model in app.models()
    }


def build_context(
    app: AppGraph,
    cluster: Cluster,
    model_options: dict[str, ModelOptions],
    settings: PlanningSettings,
    *,
    seed: int = 0,
    sample_index: int = 0,
    finished: dict[str, np.ndarray] | None = None,
    known_outputs: dict[str, dict[int, int]] | None = None,
    engine_scale: int = 1,
) -> PlanningContext:
    """Sample the workload and set up lazy curves for every model; ``engine_scale`` > 1 when ``app`` is a
    subsample standing for an app that many times larger (``scale_model.py``)."""
    workload = sample_workload(
        app, {m: o.sampling for m, o in model_options.items()}, seed=seed, sample_index=sample_index,
        finished=finished, known_outputs=known_outputs,
    )
    curves = {}
    longest = {model: max(int((workload.nodes[n].prompt + workload.nodes[n].output).max()) for n in nodes)
               for model, nodes in workload.model_nodes.items()}
    for model in workload.models:  # a scale model's subsample may leave a model of the app without requests
        options_of_model = model_options[model]
        options = [o for o in options_of_model.options(cluster.usable_gpus, allow_replicas=settings.allow_replicas,
                                                       allow_sharing=settings.allow_sharing)
                   if shrinkable(options_of_model, o, engine_scale, longest[model])]
        curves[model] = model_curves(workload, options_of_model, options, batches=settings.curve_batches,
                                     engine_scale=engine_scale)
    nodes = workload.nodes
    membership = np.array([[1.0 if n.model == m else 0.0 for n in nodes] for m in workload.models])
    return PlanningContext(
        app=app, cluster=cluster, settings=settings, workload=workload, model_options=model_options, curves=curves,
        total_tokens=np.array([n.remaining_tokens() for n in nodes], dtype=np.float64),
        flops_per_token=np.array([n.flops_per_token for n in nodes], dtype=np.float64),
        node_model=[n.model for n in nodes],
        upstream=[n.upstream for n in nodes],
        reads=[n.reads for n in nodes],
        membership=membership,
        engine_scale=engine_scale,
        longest_tokens=longest,
    )

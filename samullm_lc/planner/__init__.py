"""The planner: which models run together, with which parallelism, on which GPUs (SamuLLM, and better).

``plan_app`` samples output lengths, searches stage sequences on a fast stage model, and replays the
chosen stages faithfully with the continuous-batching simulator; ``evaluate_plan`` replays any plan;
``lower_bound_seconds`` bounds what any plan can achieve; ``replan`` plans the rest of a running app.
"""

from samullm_lc.planner.api import evaluate_plan, lower_bound_seconds, plan_app, replan
from samullm_lc.planner.cluster import Cluster, Topology, device_word
from samullm_lc.planner.plan import ExecutionPlan, Plan, Stage, StageEntry
from samullm_lc.planner.planners import PLANNERS, check_planner
from samullm_lc.planner.state import RunState

__all__ = [
    "PLANNERS",
    "Cluster",
    "ExecutionPlan",
    "Plan",
    "RunState",
    "Stage",
    "StageEntry",
    "Topology",
    "check_planner",
    "device_word",
    "evaluate_plan",
    "lower_bound_seconds",
    "plan_app",
    "replan",
]

"""The planner registry: every planner replays its stages faithfully and returns the replayed run.

A planner turns a ``PlanningContext`` into a finished ``ExactRun``: its policy picks each stage from the
replayed state, the replay decides when the stage ends. ``search`` runs greedy and the baselines as
shadows: at the first stage where one would choose differently the run is forked, and that plan is
replayed from there when the stage model puts it within ``REPLAY_MARGIN`` of the best replayed time so
far; the best replay is kept (the most promising plans are replayed first, so that a good one raises the
bar for the rest). So ``search`` is never worse than greedy or a baseline unless the stage model misjudges that
plan by more than the margin (its search is seeded with them, so it is never worse in the stage model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.planner.baselines import (
    BASELINE_POLICIES,
    AllAtOncePolicy,
    MuxServeLikePolicy,
    PerModelPoolsPolicy,
    SequentialPolicy,
)
from samullm_lc.planner.cluster import device_word
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.replay import ExactRun
from samullm_lc.planner.search import ExhaustivePolicy, GreedyPolicy, SearchPolicy, rollout, sequential_floor
from samullm_lc.planner.stages import Group, StageState

REPLAY_MARGIN = 1.05
"""``search`` also replays greedy's or a baseline's plan when the stage model puts it within this factor of
the best replayed time so far."""
DEFAULT_PLANNER = "search"
"""The planner ``plan_app``, ``replan``, the runtime and the command line use unless told otherwise (``SearchPlanner``)."""
EXHAUSTIVE_MAX_MODELS = 6
"""The exhaustive planner refuses apps with more models than this: its candidate stages grow exponentially."""
EXHAUSTIVE_MAX_GPUS = 8
"""The exhaustive planner refuses clusters with more GPUs than this."""


class Policy(Protocol):
    """Chooses the next stage's engines from the replayed state."""

    def next_group(self, state: StageState) -> Group:
        """The group of the next stage."""
        ...


def drive(ctx: PlanningContext, run: ExactRun, policy: Policy | _Shadowed) -> ExactRun:
    """Replay the policy's stages until every request is done."""
    while not run.done():
        if len(run.stages) > ctx.num_nodes + 1:
            raise SamullmError(f"the plan of {ctx.app.name!r} does not finish: every stage should finish a node")
        view = run.view()
        group = policy.next_group(view, run) if isinstance(policy, _Shadowed) else policy.next_group(view)
        run.run_stage(group)
    return run


class Planner:
    """Base class: a named way of choosing stages."""

    name: ClassVar[str]
    summary: ClassVar[str]
    preloads: ClassVar[bool] = False  # its plan may load an engine during the stage before (``preload.py``)
    plans_by_node: ClassVar[bool] = False  # a large app on equal nodes is planned for one (``node_split.py``)
    policy_class: ClassVar[Callable[[PlanningContext], Policy]]  # makes its stage policy for one planning run

    def policy(self, ctx: PlanningContext) -> Policy:
        """The stage policy of this planner for one planning run."""
        return self.policy_class(ctx)

    def run(self, ctx: PlanningContext, fresh: Callable[[], ExactRun]) -> ExactRun:
        """The replayed run of this planner's plan."""
        return drive(ctx, fresh(), self.policy(ctx))


class GreedyPlanner(Planner):
    """The `greedy` planner: SamuLLM's greedy: the highest-throughput stage each time."""

    name = "greedy"
    summary = "SamuLLM's greedy: the highest-throughput stage each time"
    plans_by_node = True
    policy_class = GreedyPolicy


class SearchPlanner(Planner):
    """The `search` planner (the default): budgeted search with memo and lower-bound pruning, seeded with
    greedy and the baselines."""

    name = DEFAULT_PLANNER
    summary = "budgeted search with memo and lower-bound pruning, seeded with greedy and the baselines (default)"
    preloads = True
    plans_by_node = True
    policy_class = SearchPolicy

    def run(self, ctx: PlanningContext, fresh: Callable[[], ExactRun]) -> ExactRun:
        """The search's replayed run, or greedy's or a baseline's when that replays faster."""
        shadows: dict[str, Policy] = {"greedy": GreedyPolicy(ctx)}
        shadows.update({name: policy(ctx) for name, policy in BASELINE_POLICIES.items()})
        shadowed = _Shadowed(self.policy(ctx), shadows)
        best = drive(ctx, fresh(), shadowed)
        limit = best.end_seconds() * REPLAY_MARGIN
        estimates = {name: self._estimate(ctx, state, shadows[name], limit)
                     for name, (_, _, state) in shadowed.forks.items()}
        for name in sorted(estimates, key=estimates.__getitem__):  # the most promising first: it raises the bar
            if estimates[name] > best.end_seconds() * REPLAY_MARGIN:
                continue
            run, choice, _ = shadowed.forks[name]
            run.run_stage(choice)
            drive(ctx, run, shadows[name])
            if run.end_seconds() < best.end_seconds():
                best = run
        return best

    @staticmethod
    def _estimate(ctx: PlanningContext, state: StageState, other: Policy, limit: float) -> float:
        """Another policy's stage-model estimate of its plan from ``state``; infinity if it cannot be within
        ``limit`` (the sequential baseline is first checked against a floor)."""
        if isinstance(other, GreedyPolicy):
            return other.predicted_end
        if isinstance(other, SequentialPolicy) and sequential_floor(ctx, state) > limit:
            return float("inf")
        sequence = rollout(ctx, state, other.next_group)
        return sequence[-1].end if sequence else float("inf")


class _Shadowed:
    """Follows one policy while asking others what they would do. Until a shadow disagrees its replay
    would be the same run; at its first disagreement the run is forked, so that only the rest of the
    shadow's plan needs simulating (if it is worth simulating at all)."""

    def __init__(self, policy: Policy, shadows: dict[str, Policy]) -> None:
        self.policy = policy
        self.shadows = shadows
        self.forks: dict[str, tuple[ExactRun, Group, StageState]] = {}

    def next_group(self, state: StageState, run: ExactRun) -> Group:
        """The followed policy's group; forks ``run`` for each shadow that first disagrees here."""
        group = self.policy.next_group(state)
        for name, shadow in self.shadows.items():
            if name not in self.forks:
                other = shadow.next_group(state)
                if other != group:
                    self.forks[name] = (run.fork(), other, state)
        return group


class ExhaustivePlanner(Planner):
    """The `exhaustive` planner: every candidate stage sequence: optimal in the stage model, small instances only."""

    name = "exhaustive"
    summary = "every candidate stage sequence: optimal in the stage model, small instances only"

    def policy(self, ctx: PlanningContext) -> Policy:
        """The exhaustive policy; ConfigError for instances too large to enumerate."""
        if len(ctx.models) > EXHAUSTIVE_MAX_MODELS or ctx.cluster.usable_gpus > EXHAUSTIVE_MAX_GPUS:
            raise ConfigError(
                f"the exhaustive planner takes at most {EXHAUSTIVE_MAX_MODELS} models and {EXHAUSTIVE_MAX_GPUS} "
                f"{device_word(ctx.cluster)} ({len(ctx.models)} models on {ctx.cluster} given); use the 'search' "
                "planner"
            )
        return ExhaustivePolicy(ctx)


class SequentialPlanner(Planner):
    """The `sequential` planner: each model alone on all GPUs with its fastest plan, in topological order
    (the authors' naive)."""

    name = "sequential"
    summary = "each model alone on all GPUs with its fastest plan, in topological order (the authors' naive)"
    policy_class = SequentialPolicy


class AllAtOncePlanner(Planner):
    """The `all-at-once` planner: every model at once, GPUs split in proportion to work, engines never changed."""

    name = "all-at-once"
    summary = "every model at once, GPUs split in proportion to work, engines never changed"
    policy_class = AllAtOncePolicy


class MuxServeLikePlanner(Planner):
    """The `muxserve-like` planner: models packed by size (small ones sharing GPUs), engines never changed."""

    name = "muxserve-like"
    summary = "models packed by size (small ones sharing GPUs), engines never changed"
    policy_class = MuxServeLikePolicy


class PerModelPoolsPlanner(Planner):
    """The `per-model-pools` planner: one fixed pool per model for the whole run, GPUs split in proportion to
    work (Ray Data LLM's actor pools); not one of the search's shadows: it is the yardstick of a Ray backend."""

    name = "per-model-pools"
    summary = "one fixed pool per model for the whole run, GPUs split in proportion to work (Ray Data LLM)"
    policy_class = PerModelPoolsPolicy


PLANNERS: dict[str, type[Planner]] = {
    cls.name: cls
    for cls in (GreedyPlanner, SearchPlanner, ExhaustivePlanner, SequentialPlanner, AllAtOncePlanner,
                MuxServeLikePlanner, PerModelPoolsPlanner)
}


def check_planner(name: str) -> str:
    """``name`` if a planner is registered under it, else ``ConfigError`` listing the choices."""
    if name not in PLANNERS:
        raise ConfigError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")
    return name


def get_planner(name: str) -> Planner:
    """A planner by registry name."""
    return PLANNERS[check_planner(name)]()

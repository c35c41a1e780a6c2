"""The planner registry: every planner replays its stages faithfully and returns the replayed run.

A planner turns a ``PlanningContext`` into a finished ``ExactRun``: its policy picks each stage from the
replayed state, the replay decides when the stage ends. ``search`` also replays the greedy plan from the first
stage where greedy would have chosen differently, and keeps the better of the two, so it is never worse
than greedy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

from samullm_lc.errors import ConfigError
from samullm_lc.planner.baselines import AllAtOncePolicy, MuxServeLikePolicy, SequentialPolicy
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.replay import ExactRun
from samullm_lc.planner.search import ExhaustivePolicy, GreedyPolicy, SearchPolicy
from samullm_lc.planner.stages import Group, StageState

EXHAUSTIVE_MAX_MODELS = 6
EXHAUSTIVE_MAX_GPUS = 8


class Policy(Protocol):
    def next_group(self, state: StageState) -> Group: ...


def drive(ctx: PlanningContext, run: ExactRun, policy: Policy | _Shadowed) -> ExactRun:
    """Replay the policy's stages until every request is done."""
    while not run.done():
        if len(run.stages) > ctx.num_nodes + 1:
            raise RuntimeError(f"the plan of {ctx.app.name!r} does not finish: every stage should finish a node")
        view = run.view()
        group = policy.next_group(view, run) if isinstance(policy, _Shadowed) else policy.next_group(view)
        run.run_stage(group)
    return run


class Planner:
    """Base class: a named way of choosing stages."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def policy(self, ctx: PlanningContext) -> Policy:
        raise NotImplementedError

    def run(self, ctx: PlanningContext, fresh: Callable[[], ExactRun]) -> ExactRun:
        """The replayed run of this planner's plan."""
        return drive(ctx, fresh(), self.policy(ctx))


class GreedyPlanner(Planner):
    name = "greedy"
    summary = "SamuLLM's greedy: the highest-throughput stage each time"

    def policy(self, ctx: PlanningContext) -> Policy:
        return GreedyPolicy(ctx)


class SearchPlanner(Planner):
    name = "search"
    summary = "budgeted depth-first search with memo and lower-bound pruning, never worse than greedy (default)"

    def policy(self, ctx: PlanningContext) -> Policy:
        return SearchPolicy(ctx)

    def run(self, ctx: PlanningContext, fresh: Callable[[], ExactRun]) -> ExactRun:
        shadowed = _Shadowed(self.policy(ctx), GreedyPolicy(ctx))
        searched = drive(ctx, fresh(), shadowed)
        if shadowed.fork is None:
            return searched
        greedy = shadowed.fork
        greedy.run_stage(shadowed.shadow_choice)
        drive(ctx, greedy, shadowed.shadow)
        return searched if searched.end_seconds() <= greedy.end_seconds() else greedy


class _Shadowed:
    """Follows one policy while asking another what it would do. Until they disagree the other's replay
    would be the same run; at the first disagreement the run is forked, so that only the rest of the
    other's plan needs simulating."""

    def __init__(self, policy: Policy, shadow: Policy) -> None:
        self.policy = policy
        self.shadow = shadow
        self.fork: ExactRun | None = None
        self.shadow_choice: Group = ()

    def next_group(self, state: StageState, run: ExactRun) -> Group:
        group = self.policy.next_group(state)
        if self.fork is None:
            other = self.shadow.next_group(state)
            if other != group:
                self.fork, self.shadow_choice = run.fork(), other
        return group


class ExhaustivePlanner(Planner):
    name = "exhaustive"
    summary = "every candidate stage sequence: optimal in the stage model, small instances only"

    def policy(self, ctx: PlanningContext) -> Policy:
        if len(ctx.models) > EXHAUSTIVE_MAX_MODELS or ctx.cluster.num_gpus > EXHAUSTIVE_MAX_GPUS:
            raise ConfigError(
                f"the exhaustive planner takes at most {EXHAUSTIVE_MAX_MODELS} models and {EXHAUSTIVE_MAX_GPUS} "
                f"GPUs ({len(ctx.models)} models on {ctx.cluster} given); use the 'search' planner"
            )
        return ExhaustivePolicy(ctx)


class SequentialPlanner(Planner):
    name = "sequential"
    summary = "each model alone on all GPUs with its fastest plan, in topological order (the authors' naive)"

    def policy(self, ctx: PlanningContext) -> Policy:
        return SequentialPolicy(ctx)


class AllAtOncePlanner(Planner):
    name = "all-at-once"
    summary = "every model at once, GPUs split in proportion to work, engines never changed"

    def policy(self, ctx: PlanningContext) -> Policy:
        return AllAtOncePolicy(ctx)


class MuxServeLikePlanner(Planner):
    name = "muxserve-like"
    summary = "models packed by size (small ones sharing GPUs), engines never changed"

    def policy(self, ctx: PlanningContext) -> Policy:
        return MuxServeLikePolicy(ctx)


PLANNERS: dict[str, type[Planner]] = {
    cls.name: cls
    for cls in (GreedyPlanner, SearchPlanner, ExhaustivePlanner, SequentialPlanner, AllAtOncePlanner,
                MuxServeLikePlanner)
}


def get_planner(name: str) -> Planner:
    """A planner by registry name."""
    try:
        return PLANNERS[name]()
    except KeyError:
        raise ConfigError(f"unknown planner {name!r}: choose one of {', '.join(PLANNERS)}") from None

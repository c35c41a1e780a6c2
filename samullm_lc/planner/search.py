"""Choosing the stages: greedy (the paper), budgeted depth-first search (the default) and exhaustive search.

All three work on the stage model (``stages.py``) and hand each chosen stage to the faithful replay
(``replay.py``), which decides when the stage really ends. After every replayed stage the policy looks at
the replayed state: if it is where the stage model said it would be (the same nodes finished), the rest
of the planned sequence is kept; otherwise the policy plans again from the replayed state.

- greedy: the candidate stage with the highest throughput, every time (SamuLLM's heuristic);
- search: limited-discrepancy search over ``branch`` candidates of each state (the greedy choice, then
  the lowest optimistic end: stage end plus a lower bound of the rest), seeded with the greedy and the
  baselines' sequences (so it never returns a worse plan than they do in the stage model), pruned with
  the lower bound and a memo of the earliest time each state was reached; it stops after
  ``max_stages`` stage evaluations;
- exhaustive: the same search over every candidate stage, without budget: optimal in the stage model
  for small instances, the yardstick of the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from samullm_lc.errors import SamullmError
from samullm_lc.planner.baselines import BASELINE_POLICIES
from samullm_lc.planner.bounds import remaining_lower_bound
from samullm_lc.planner.candidates import all_groups, heuristic_groups, runnable_models, valid_group
from samullm_lc.planner.cluster import device_word
from samullm_lc.planner.context import PlanningContext
from samullm_lc.planner.stages import Group, StageOutcome, StageState, run_stage

Generator = Callable[[PlanningContext, StageState], list[Group]]


def ranked_outcomes(ctx: PlanningContext, state: StageState, generator: Generator) -> list[StageOutcome]:
    """Every candidate stage's outcome, highest throughput first (earlier end breaks ties)."""
    outcomes = [o for g in generator(ctx, state) if (o := run_stage(ctx, state, g)) is not None]
    outcomes.sort(key=lambda o: (-o.throughput, o.end, o.group))
    return outcomes


def greedy_sequence(ctx: PlanningContext, state: StageState, generator: Generator) -> list[StageOutcome]:
    """Take the best stage until every node is done."""
    path: list[StageOutcome] = []
    while not state.done():
        outcomes = ranked_outcomes(ctx, state, generator)
        if not outcomes:
            break
        path.append(outcomes[0])
        state = outcomes[0].state
    return path


@dataclass(slots=True)
class SearchBudget:
    """Stops the search after ``max_stages`` stage evaluations or ``max_seconds`` of wall time."""

    max_stages: float = float("inf")
    max_seconds: float = float("inf")
    used: int = 0
    started: float = field(default_factory=time.perf_counter)

    def spent(self) -> bool:
        """Whether the budget is used up."""
        return self.used >= self.max_stages or time.perf_counter() - self.started >= self.max_seconds


def rollout(ctx: PlanningContext, state: StageState, policy: Callable[[StageState], Group]) -> list[StageOutcome]:
    """The stage sequence a policy (a baseline's ``next_group``) produces in the stage model."""
    path: list[StageOutcome] = []
    while not state.done():
        outcome = run_stage(ctx, state, policy(state))
        if outcome is None:
            return []
        path.append(outcome)
        state = outcome.state
    return path


def sequential_floor(ctx: PlanningContext, state: StageState) -> float:
    """Roughly the least the sequential baseline can take from ``state``: each model in turn, scaled
    perfectly to all GPUs from its most GPU-efficient plan simulated so far, loads included. Simulating
    the baseline's own plans (every model on all GPUs) is worth it only when the search did not beat this."""
    total = state.time
    gpus = ctx.cluster.usable_gpus
    for model, work in zip(ctx.models, ctx.model_work(state.remaining).tolist(), strict=True):
        if work > 0.0:
            running = state.engines.get(model)
            curves = ctx.curves[model].known()
            total += min(c.remaining_seconds(work) * c.option.num_gpus / gpus
                         + (0.0 if running is not None and running.option == c.option else c.load_seconds)
                         for c in curves)
    return total


def search_sequence(ctx: PlanningContext, root: StageState, generator: Generator, *, branch: int | None,
                    budget: SearchBudget, discrepancies: bool = True,
                    seeds: tuple[list[StageOutcome], ...] = ()) -> list[StageOutcome]:
    """Branch and bound from ``root``; returns the best complete stage sequence found.

    The greedy sequence and the ``seeds`` (complete sequences, e.g. the baselines') are the first
    incumbents. With ``discrepancies`` the tree is searched by limited discrepancy: first every sequence
    that leaves the greedy choice once, then twice, and so on, so the budget is spread over early and late
    decisions instead of being spent at the bottom of one subtree; without, plain depth-first search.
    """
    best_path = greedy_sequence(ctx, root, generator)
    best_end = best_path[-1].end if best_path and best_path[-1].state.done() else np.inf
    for seed in seeds:
        if seed and seed[-1].state.done() and seed[-1].end < best_end - 1e-9:
            best_path, best_end = seed, seed[-1].end
    memo: dict[tuple, tuple[float, int]] = {}
    children: dict[tuple, list[StageOutcome]] = {}
    path: list[StageOutcome] = []
    unlimited = 1 << 30

    def expand(state: StageState, key: tuple) -> list[StageOutcome]:
        if key not in children:
            outcomes = ranked_outcomes(ctx, state, generator)
            budget.used += len(outcomes)
            children[key] = _most_promising(ctx, outcomes, branch)
        return children[key]

    def visit(state: StageState, left: int) -> bool:
        """Search below ``state`` with ``left`` discrepancies; True if some branch was cut for lack of them."""
        nonlocal best_path, best_end
        if state.done():
            if state.time < best_end - 1e-9:
                best_end, best_path = state.time, list(path)
            return False
        if budget.spent() or state.time + remaining_lower_bound(ctx, state) >= best_end - 1e-9:
            return False
        key = state.key(ctx.total_tokens)
        seen = memo.get(key)
        if seen is not None and seen[0] <= state.time + 1e-9 and seen[1] >= left:
            return False
        memo[key] = (state.time, left)
        cut = False
        for rank, outcome in enumerate(expand(state, key)):
            if rank and not left:
                return True
            path.append(outcome)
            cut |= visit(outcome.state, left - (1 if rank else 0))
            path.pop()
        return cut

    if not discrepancies:
        visit(root, unlimited)
        return best_path
    allowed = 1
    while not budget.spent() and visit(root, allowed):
        allowed += 1
    return best_path


def _most_promising(ctx: PlanningContext, outcomes: list[StageOutcome], branch: int | None) -> list[StageOutcome]:
    """The greedy choice first, then the others by optimistic end (stage end + lower bound of the rest)."""
    if not outcomes:
        return []
    bound = {id(o): o.end + remaining_lower_bound(ctx, o.state) for o in outcomes}
    rest = sorted(outcomes[1:], key=lambda o: (bound[id(o)], -o.throughput))
    return [outcomes[0], *rest][:branch]


class StagePolicy:
    """Chooses the next stage from a replayed state, following its plan while the replay agrees with it."""

    def __init__(self, ctx: PlanningContext) -> None:
        self.ctx = ctx
        self._planned: list[StageOutcome] = []
        self._expected: set[int] | None = None
        self.predicted_end = np.inf  # stage-model end of the sequence being followed

    def next_group(self, state: StageState) -> Group:
        """The group of the next stage to replay."""
        if not self._on_track(state):
            self._planned = self.sequence(state)
            self.predicted_end = self._planned[-1].end if self._planned else np.inf
            if not self._planned:
                runnable = runnable_models(self.ctx, state)
                raise SamullmError(f"no stage can run at {state.time:.1f} s (runnable models: {runnable}); "
                                   f"every runnable model needs more {device_word(self.ctx.cluster)} than the "
                                   "cluster has free")
        outcome = self._planned.pop(0)
        self._expected = set(np.flatnonzero(outcome.state.remaining <= 0.0).tolist())
        return outcome.group

    def _on_track(self, state: StageState) -> bool:
        if not self._planned or self._expected is None:
            return False
        finished = set(np.flatnonzero(state.remaining <= 0.0).tolist())
        group = self._planned[0].group
        return finished == self._expected and valid_group(self.ctx, state, group, runnable_models(self.ctx, state))

    def sequence(self, state: StageState) -> list[StageOutcome]:
        """The stage sequence this policy plans from ``state``."""
        raise NotImplementedError


class GreedyPolicy(StagePolicy):
    """SamuLLM's greedy: the highest-throughput candidate stage each time."""

    def sequence(self, state: StageState) -> list[StageOutcome]:
        """The greedy stage sequence from ``state``."""
        return greedy_sequence(self.ctx, state, heuristic_groups)


class SearchPolicy(StagePolicy):
    """Budgeted search; a re-plan (after the replay departs from the plan) gets an eighth of the first budget,
    and once twice the first budget is spent, re-plans are greedy."""

    def __init__(self, ctx: PlanningContext, *, branch: int = 3, max_stages: int = 1500, max_seconds: float = 3.0,
                 generator: Generator = heuristic_groups) -> None:
        super().__init__(ctx)
        self.branch = branch
        self.max_stages = max_stages
        self.max_seconds = max_seconds
        self.generator = generator
        self.spent = 0

    def sequence(self, state: StageState) -> list[StageOutcome]:
        """The best sequence the budget finds from ``state`` (the sequential baseline's if that is better)."""
        share = 1.0 if self.spent == 0 else 0.125
        if self.spent >= 2 * self.max_stages:
            return greedy_sequence(self.ctx, state, self.generator)
        budget = SearchBudget(max_stages=self.max_stages * share, max_seconds=self.max_seconds * share)
        seeds = tuple(rollout(self.ctx, state, policy(self.ctx).next_group)
                      for name, policy in BASELINE_POLICIES.items() if name != "sequential")
        sequence = search_sequence(self.ctx, state, self.generator, branch=self.branch, budget=budget, seeds=seeds)
        self.spent += max(budget.used, 1)
        if not sequence or sequence[-1].end > sequential_floor(self.ctx, state):
            alone = rollout(self.ctx, state, BASELINE_POLICIES["sequential"](self.ctx).next_group)
            if alone and (not sequence or alone[-1].end < sequence[-1].end):
                return alone
        return sequence


class ExhaustivePolicy(StagePolicy):
    """Every candidate stage, every branch: optimal in the stage model (small instances only)."""

    def __init__(self, ctx: PlanningContext, *, max_seconds: float = 600.0) -> None:
        super().__init__(ctx)
        self.max_seconds = max_seconds

    def sequence(self, state: StageState) -> list[StageOutcome]:
        """The optimal sequence from ``state`` in the stage model (up to ``max_seconds`` of search)."""
        budget = SearchBudget(max_seconds=self.max_seconds)
        return search_sequence(self.ctx, state, all_groups, branch=None, budget=budget, discrepancies=False)

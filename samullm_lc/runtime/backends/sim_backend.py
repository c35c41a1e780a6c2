"""Simulated engines on a virtual clock: the cost model stands in for vLLM.

Each engine is a ``ContinuousBatchingSimulator`` with the latency model, engine limits and load time the
planner prices its model and plan with (``costmodel.model_costs.ModelCosts``: a time-sliced engine is slowed
as the planner assumes), so a run is a dry run at any scale (64 simulated GPUs on a laptop).
Output lengths are drawn from the model's output-length distribution (``ignore_eos`` gives ``max_tokens``);
the text of a completion is one placeholder word per token, so downstream prompts grow as they would.
A request the real engine would refuse is refused here too, with vLLM's reasons: a prompt that leaves no
room for output within ``max_model_len`` (text prompts are counted at 4 characters a token, as no
tokenizer is loaded), token ids outside the model's vocabulary.

``wait`` moves the clock to the next event: an engine finishing its load, or the next request finish of
any engine. An engine's simulator runs ahead to its own next finish; a request submitted to it at an
earlier virtual time joins at that finish (at most one request-finish interval late), which keeps one
event per finish instead of re-simulating. Clients on other threads submit at the virtual time the driver
takes their request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from samullm_lc.costmodel.model_costs import ModelCosts
from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.costmodel.simulator import ContinuousBatchingSimulator, SimulationResult
from samullm_lc.planner.cluster import Cluster
from samullm_lc.runtime.backends.base import DevicesLost, EngineReady, EngineSpec, EngineStopped, Event, RequestDone
from samullm_lc.runtime.requests import Completion, GenerationResult, Request

PLACEHOLDER_WORD = "sim"
FORGET_AFTER = 4096
"""Reported sequences an engine keeps before its simulator forgets them (memory stays bounded on a stream)."""


@dataclass(slots=True)
class _SimEngine:
    spec: EngineSpec
    load_seconds: float
    ready_at: float
    sim: ContinuousBatchingSimulator
    max_model_len: int
    ready: bool = False
    owner: list[int] = field(default_factory=list)  # simulator sequence -> request id
    sequences: dict[int, list[int]] = field(default_factory=dict)  # unfinished request id -> its sequences
    prompt_tokens: list[int] = field(default_factory=list)  # per sequence
    max_tokens: list[int] = field(default_factory=list)  # per sequence
    reported: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per sequence
    next_finish: float | None = None  # global time of the next unreported finish (None: not computed)
    result: SimulationResult | None = None  # the simulator's state after its last run (None: changed since)


class SimBackend:
    """The cost model as the engine, on a virtual clock."""

    name = "sim"

    def __init__(self, cluster: Cluster, *, profiles: dict[str, EngineProfile] | None = None, seed: int = 0) -> None:
        self.cluster = cluster
        self._profiles = profiles or {}
        self._rng = np.random.default_rng(seed)
        self._clock = 0.0
        self._engines: dict[int, _SimEngine] = {}
        self._costs: dict[str, ModelCosts] = {}
        self._queued: list[Event] = []
        self._woken = threading.Event()
        self._losses: list[tuple[float, int]] = []  # (virtual time, node) of node losses to simulate
        self._lost: set[int] = set()  # devices of nodes that left

    def now(self) -> float:
        return self._clock

    def model_costs(self, model: str) -> ModelCosts:
        """What the model's engines cost on this cluster (built once)."""
        if model not in self._costs:
            self._costs[model] = ModelCosts(model, self.cluster.spec, topology=self.cluster.topology,
                                            profile=self._profiles.get(model))
        return self._costs[model]

    def start_engine(self, spec: EngineSpec) -> None:
        if self._lost.intersection(spec.devices):
            self._queued.append(EngineStopped(spec.engine_id, (), failure="its devices' node has left the cluster",
                                              node_lost=True))
            return
        costs = self.model_costs(spec.model)
        scheduler = costs.scheduler(spec.tp, spec.memory_fraction)
        sim = ContinuousBatchingSimulator(scheduler, costs.latency(spec.tp, time_sliced=spec.time_sliced))
        load = costs.load_seconds(spec.tp) + self.cluster.weight_read_extra_seconds(costs.architecture.weight_bytes)
        self._engines[spec.engine_id] = _SimEngine(
            spec=spec, load_seconds=load, ready_at=self._clock + load, sim=sim, max_model_len=scheduler.max_model_len
        )

    def submit(self, engine_id: int, requests: list[Request]) -> None:
        engine = self._engines[engine_id]
        costs = self.model_costs(engine.spec.model)
        distribution = costs.output_length_distribution()
        prompts, outputs, caps = [], [], []
        for request in requests:
            prompt = request.prompt_length_hint()
            refusal = _refusal(request, prompt, engine.max_model_len, costs.architecture.vocab_size)
            if refusal is not None:
                self._queued.append(RequestDone(engine_id, request.id, None, refusal))
                continue
            sampling = request.sampling
            cap = min(sampling.max_tokens, engine.max_model_len - prompt)
            if sampling.ignore_eos:
                lengths = [cap] * sampling.n
            else:
                lengths = distribution.sample(sampling.n, self._rng, max_tokens=cap).tolist()
            first = len(engine.owner)
            engine.sequences[request.id] = list(range(first, first + sampling.n))
            engine.owner.extend([request.id] * sampling.n)
            prompts.extend([prompt] * sampling.n)
            outputs.extend(lengths)
            caps.extend([cap] * sampling.n)
        if not prompts:
            return
        local = max(self._clock - engine.ready_at, engine.sim.now)
        engine.sim.add_requests(np.asarray(prompts), np.asarray(outputs), np.full(len(prompts), local))
        engine.max_tokens.extend(caps)
        engine.prompt_tokens.extend(prompts)
        engine.reported = np.concatenate([engine.reported, np.zeros(len(prompts), dtype=bool)])
        engine.next_finish = None
        engine.result = None

    def stop_engine(self, engine_id: int) -> None:
        engine = self._engines.pop(engine_id, None)
        if engine is None:
            return
        self._queued.extend(self._report(engine, self._clock))
        unfinished = tuple(sorted(engine.sequences))
        self._queued.append(EngineStopped(engine_id, unfinished))

    def fail_engine(self, engine_id: int, failure: str, *, permanent: bool = False, node_lost: bool = False) -> None:
        """Simulate an engine dying now (a crash, a killed process, a lost node): what it finished by now is
        reported, and the rest comes back unfinished with ``failure``, as from a real backend."""
        engine = self._engines.pop(engine_id, None)
        if engine is None:
            return
        self._queued.extend(self._report(engine, self._clock))
        self._queued.append(EngineStopped(engine_id, tuple(sorted(engine.sequences)), failure=failure,
                                          permanent=permanent, node_lost=node_lost))

    def lose_node_at(self, at_seconds: float, node: int) -> None:
        """Simulate ``node`` leaving the cluster at virtual time ``at_seconds`` (as the ray backend reports it):
        ``DevicesLost`` for its devices, then each of its engines fails; later engines there fail at once."""
        self._losses.append((at_seconds, node))
        self._losses.sort()

    def _lose_due_node(self, upcoming: list[tuple[float, int]]) -> bool:
        """Apply the first scheduled node loss if it comes before every engine's next event."""
        if not self._losses or not upcoming or self._losses[0][0] > min(upcoming)[0]:
            return False
        at_seconds, node = self._losses.pop(0)
        self._clock = max(self._clock, at_seconds)
        devices = self.cluster.node_devices(node)
        reason = f"node {node} (devices {list(devices)}) left the cluster"
        self._lost.update(devices)
        self._queued.append(DevicesLost(devices, reason))
        for engine_id, engine in list(self._engines.items()):
            if self._lost.intersection(engine.spec.devices):
                self.fail_engine(engine_id, reason, node_lost=True)
        return True

    def model_of(self, engine_id: int) -> str | None:
        """The model an engine runs (None once it has stopped)."""
        engine = self._engines.get(engine_id)
        return None if engine is None else engine.spec.model

    def wake(self) -> None:
        self._woken.set()

    def wait(self, timeout: float) -> list[Event]:
        if self._queued:
            events, self._queued = self._queued, []
            return events
        upcoming = [(self._next_event(e), engine_id) for engine_id, e in self._engines.items()]
        upcoming = [(t, engine_id) for t, engine_id in upcoming if t < np.inf]
        if self._lose_due_node(upcoming):
            events, self._queued = self._queued, []
            return events
        if not upcoming:
            self._woken.wait(timeout)  # nothing to simulate: real time passes until a client submits
            self._woken.clear()
            return []
        when, engine_id = min(upcoming)
        self._clock = max(self._clock, when)
        engine = self._engines[engine_id]
        if not engine.ready:
            engine.ready = True
            return [EngineReady(engine_id, engine.load_seconds)]
        engine.next_finish = None
        return self._report(engine, self._clock)

    def _next_event(self, engine: _SimEngine) -> float:
        """Global time of the engine's next event (load done, or its next request finish); inf if none."""
        if not engine.ready:
            return engine.ready_at
        if engine.next_finish is None:
            if not engine.sequences:
                return np.inf
            engine.result = engine.sim.run(stop_at_first_finish=True)
            finish = engine.result.finish_seconds
            fresh = finish[~engine.reported & ~np.isnan(finish)]
            engine.next_finish = engine.ready_at + float(fresh.min()) if fresh.size else np.inf
        return engine.next_finish

    def _report(self, engine: _SimEngine, until: float) -> list[Event]:
        """Results of the engine's requests whose every sequence finished by global time ``until``."""
        if not engine.ready:
            return []
        result = engine.result if engine.result is not None else engine.sim.result()
        finished = np.flatnonzero(~engine.reported & (engine.ready_at + result.finish_seconds <= until + 1e-9))
        engine.reported[finished] = True
        events: list[Event] = []
        for request_id in dict.fromkeys(engine.owner[s] for s in finished.tolist()):
            sequences = engine.sequences[request_id]
            if not engine.reported[sequences].all():
                continue
            del engine.sequences[request_id]
            completions = []
            for s in sequences:
                tokens = int(result.output_tokens[s])
                completions.append(Completion(text=" ".join([PLACEHOLDER_WORD] * tokens), num_tokens=tokens,
                                              finish_reason="length" if tokens >= engine.max_tokens[s] else "stop"))
            events.append(RequestDone(engine.spec.engine_id, request_id,
                                      GenerationResult(model=engine.spec.model, completions=completions,
                                                       prompt_tokens=engine.prompt_tokens[sequences[0]])))
        _forget_reported(engine)
        return events

    def close(self) -> None:
        self._engines.clear()


def _refusal(request: Request, prompt_tokens: int, max_model_len: int, vocab_size: int) -> str | None:
    """Why vLLM would refuse this request (its input processor's checks and words), or None."""
    if request.kind == "openai":
        return ("the sim backend does not answer OpenAI calls (the LangChain drop-in's): vLLM's server code "
                "builds their responses, and the sim backend runs no vLLM; use backend='vllm'")
    if request.kind == "tokens":
        ids = request.prompt
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:  # type: ignore[union-attr]
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())  # type: ignore[union-attr]
            return f"VLLMValidationError: Token id {bad} is out of vocabulary (the model has {vocab_size} tokens)"
    counted = "" if request.kind == "tokens" else " (counted at 4 characters a token)"
    if prompt_tokens > max_model_len:
        return (f"VLLMValidationError: The decoder prompt (length {prompt_tokens}{counted}) is longer than the "
                f"maximum model length of {max_model_len}.")
    if prompt_tokens == max_model_len:
        return (f"VLLMValidationError: The decoder prompt (length {prompt_tokens}{counted}) plus the number of "
                f"requested output tokens (at least 1) is longer than the maximum model length of {max_model_len}.")
    return None


def _forget_reported(engine: _SimEngine) -> None:
    """Drop the leading sequences whose requests were all reported, once there are ``FORGET_AFTER`` of them,
    from the engine and its simulator (sequence numbers shift down)."""
    reported = engine.reported
    count = int(reported.size if reported.all() else reported.argmin())
    if count < FORGET_AFTER:
        return
    count = min([count, *(sequences[0] for sequences in engine.sequences.values())])
    if count < FORGET_AFTER:
        return
    engine.sim.forget(count)
    del engine.owner[:count], engine.prompt_tokens[:count], engine.max_tokens[:count]
    engine.reported = reported[count:].copy()
    engine.sequences = {rid: [s - count for s in sequences] for rid, sequences in engine.sequences.items()}
    engine.result = None

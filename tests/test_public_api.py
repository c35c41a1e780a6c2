"""The root package's public surface: pinned, importable, and light to import."""

import subprocess
import sys

import samullm_lc

PUBLIC = {
    # the LangChain drop-in
    "offline", "wrap", "ChatSamullm", "SamullmLLM", "trace", "plan",
    # the engine pool
    "EnginePool", "RunReport", "GenerationResult", "SamplingSpec",
    # the app graph and the planner
    "AppGraph", "LLMNode", "Cluster", "ExecutionPlan", "Plan", "plan_app", "evaluate_plan", "replan",
    # the cost model
    "CostModel", "Estimate", "EngineProfile", "OutputLengthDistribution", "ModelArchitecture", "SchedulerConfig",
    "ContinuousBatchingSimulator", "SimulationResult", "simulate", "IterationLatencyModel", "AnalyticLatencyModel",
    "LinearLatencyModel", "fit_linear_latency", "gpu_scheduler_config", "HARDWARE", "Hardware", "get_hardware",
    "catalogue_names", "resolve_architecture",
    # errors
    "SamullmError", "ConfigError", "DoesNotFitError", "EngineError", "ProfileError", "RequestError",
    "UnknownHardwareError", "UnknownModelError",
}


def test_all_is_pinned_and_every_name_resolves():
    assert set(samullm_lc.__all__) == PUBLIC
    assert len(samullm_lc.__all__) == len(PUBLIC)
    for name in samullm_lc.__all__:
        assert getattr(samullm_lc, name) is not None, name
    assert set(dir(samullm_lc)) >= PUBLIC


def test_root_names_are_the_subpackages_objects():
    from samullm_lc.langchain import offline
    from samullm_lc.planner import plan_app
    from samullm_lc.runtime import EnginePool

    assert samullm_lc.offline is offline and samullm_lc.plan_app is plan_app and samullm_lc.EnginePool is EnginePool


def test_every_error_a_user_can_cause_is_a_samullm_error():
    for name in ("ConfigError", "DoesNotFitError", "EngineError", "ProfileError", "RequestError",
                 "UnknownHardwareError", "UnknownModelError"):
        assert issubclass(getattr(samullm_lc, name), samullm_lc.SamullmError), name


def test_an_unknown_root_name_is_an_attribute_error():
    try:
        samullm_lc.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_does_not_import_langchain_or_the_planner():
    code = ("import sys, samullm_lc; "
            "print(sorted(m for m in ('langchain_core', 'samullm_lc.planner', 'samullm_lc.runtime.pool', 'vllm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_offline_takes_its_models_by_position_or_by_name():
    by_position = samullm_lc.offline(["tiny-llama-s"], backend="sim", devices="1xA100-80GB")
    by_name = samullm_lc.offline(models={"gpt-4o": "tiny-llama-s"}, backend="sim", devices="1xA100-80GB")
    assert by_position.names == {"tiny-llama-s": "tiny-llama-s"} and by_name.names == {"gpt-4o": "tiny-llama-s"}

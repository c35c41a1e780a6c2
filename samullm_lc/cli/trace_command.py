"""``samullm trace MODULE:OBJECT --inputs FILE``: the app graph of a LangChain pipeline, without an engine.

The object is a Runnable (an LCEL chain, a compiled LangGraph graph) or a function of no arguments that returns
one. The inputs are a JSON list or JSON Lines, one pipeline input each. The pipeline runs on them with the
stand-in model (``samullm_lc/langchain/tracing.py``); its own code runs once per input, side effects included.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from samullm_lc.cli.outcome import ExitCode, fail, output_path, write_outputs
from samullm_lc.errors import ConfigError, SamullmError
from samullm_lc.user_files import read_user_text

INPUTS_FIX = "give a JSON list of the pipeline's inputs, or JSON Lines with one input per line"


def trace(
    target: Annotated[str, typer.Argument(help="MODULE:OBJECT, e.g. examples.router:build (a Runnable, or a "
                                               "function of no arguments returning one); MODULE may be a .py path.")],
    inputs: Annotated[Path, typer.Option(help="The pipeline's inputs: a JSON list, or JSON Lines.")],
    models: Annotated[list[str] | None, typer.Option(
        "--model", help="CLIENT=WEIGHTS: the weights a client's model name maps to (repeat); as offline(models=).")
    ] = None,
    scale: Annotated[int | None, typer.Option(min=1, help="Scale the traced graph to this many inputs.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the AppGraph JSON here (samullm plan/run read it).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph as one JSON object.")] = False,
) -> None:
    """Trace a LangChain pipeline's LLM calls into its app graph (nodes, calls per input, routing, dependencies)."""
    from samullm_lc.langchain.tracing import trace as trace_chain

    try:
        if out is not None:
            output_path(out, "graph")
        chain = _load_target(target)
        items = _read_inputs(inputs)
        mapping = _model_mapping(models or [])
        graph = trace_chain(chain, items, models=mapping)
        if scale is not None:
            graph = graph.scaled(scale)
    except SamullmError as error:
        fail(error)
    if as_json:
        typer.echo(graph.model_dump_json(exclude_none=True))
    else:
        typer.echo(graph.describe())
    if out is not None and not write_outputs([("graph", out, graph.save)]):
        raise typer.Exit(code=ExitCode.NOT_WRITTEN)


def _load_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{target!r} is not MODULE:OBJECT; write e.g. examples.router:build or my_app.py:chain")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.exists():
                raise ConfigError(f"{module_name} does not exist; give the pipeline's .py file or module name")
            sys.path.insert(0, str(path.parent))
            module_name = path.stem
        else:
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} ({exc}); run from the folder that holds it, or give "
                          "its .py path") from None
    obj = getattr(module, attribute, None)
    if obj is None:
        raise ConfigError(f"{module_name} has no {attribute!r}; name a Runnable or a function returning one")
    from langchain_core.runnables import Runnable

    if not isinstance(obj, Runnable) and callable(obj):
        obj = obj()
    if not isinstance(obj, Runnable):
        raise ConfigError(f"{target} is a {type(obj).__name__}, not a LangChain Runnable (or a function of no "
                          "arguments returning one)")
    return obj


def _read_inputs(path: Path) -> list[Any]:
    text = read_user_text(path, what="inputs", fix=INPUTS_FIX)
    try:
        items = json.loads(text)
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise ConfigError(f"inputs file {path} is neither JSON nor JSON Lines ({exc}); {INPUTS_FIX}") from None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"inputs file {path} holds no list of inputs; {INPUTS_FIX}")
    return items


def _model_mapping(pairs: list[str]) -> dict[str, str] | None:
    mapping = {}
    for pair in pairs:
        client, sep, weights = pair.partition("=")
        if not sep or not client or not weights:
            raise ConfigError(f"--model {pair!r} is not CLIENT=WEIGHTS, e.g. --model gpt-judge=tiny-llama-s")
        mapping[client] = weights
    return mapping or None

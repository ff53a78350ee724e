"""Shared by the example scripts: choose the model, print an agent's events, exit cleanly on errors.

The model comes from ``--model``, else ``$GLM_AGENT_MODEL``, else the example's own scripted
replies in ``examples/scripted/`` (a stand-in for a real model, labelled as such when used).
A model spec is a checkpoint folder, a Hugging Face id in the local cache, an OpenAI-compatible
server URL, or ``scripted:FILE.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from glm_agent import GlmAgentError
from glm_agent.models import ScriptedModel, load_chat_model
from glm_agent.render import print_event

EXAMPLES = Path(__file__).resolve().parent
SCRIPTED = EXAMPLES / "scripted"
TOOLS = EXAMPLES.parent / "tools"


def example_args(description: str, question: str) -> argparse.ArgumentParser:
    """A parser with the options every example takes: an optional question and ``--model``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("question", nargs="?", default=question, help="what to ask (default: %(default)r)")
    parser.add_argument(
        "--model",
        default=os.environ.get("GLM_AGENT_MODEL"),
        help="checkpoint folder, hub id, server URL or scripted:FILE.json "
        "(default: $GLM_AGENT_MODEL, else this example's scripted replies)",
    )
    return parser


def choose_model(spec: str | None, script: str) -> tuple[Any, bool]:
    """The model named by ``spec``, or the example's scripted replies; and whether it is scripted."""
    model = load_chat_model(spec) if spec else ScriptedModel.from_file(SCRIPTED / script)
    scripted = isinstance(model, ScriptedModel)
    if scripted:
        print(
            f"[scripted model] {model.name}: replaying prepared replies, not a real model; "
            "pass --model or set GLM_AGENT_MODEL to use ChatGLM3\n"
        )
    return model, scripted


def import_file(path: Path) -> ModuleType:
    """Import a module from a file path (the ready-made tool modules in ``tools/`` are not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def show(event: Any) -> None:
    """Print one agent event as plain text (``glm_agent.render.print_event``): the answer streams, the rest get lines."""
    print_event(event)


def run_example(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser) -> None:
    """Run ``main``; our own errors (no weights, bad tool file ...) end as one line and exit code 2."""
    args = parser.parse_args()
    try:
        code = main(args)
    except GlmAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)

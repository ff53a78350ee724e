"""The public face of the package: one name per concept, errors in one module, the version."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import glm_agent
from glm_agent import errors
from glm_agent import events as ev
from glm_agent.chatglm3 import parser
from glm_agent.messages import INTERPRETER, CodeCall

PACKAGE = Path(glm_agent.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _trees():
    for path in SOURCES:
        yield path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def test_version_comes_from_the_installed_metadata(monkeypatch):
    assert glm_agent.__version__ == metadata.version("glm-agent")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert glm_agent._installed_version() == "0+unknown"


def test_every_error_class_of_ours_is_defined_in_errors_py():
    for info in pkgutil.walk_packages(glm_agent.__path__, "glm_agent."):
        if info.name.endswith("__main__"):
            continue  # running it is the command
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed (e.g. torch)
            continue
    seen, todo = set(), [errors.GlmAgentError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo += [c for c in cls.__subclasses__() if c not in seen]
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in seen if c.__module__ != "glm_agent.errors")
    assert outside == []
    assert set(errors.__all__) >= {c.__name__ for c in seen if c.__module__ == "glm_agent.errors"}


def test_the_interpreter_name_is_written_once():
    assert CodeCall(code="1").name == INTERPRETER == "interpreter"
    places = [
        f"{name}:{node.lineno}"
        for name, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value == "interpreter"
    ]
    # the definition, and the Literal type of CodeCall.name (a type needs the literal itself)
    files = [p.split(":")[0] for p in places]
    assert files == ["glm_agent/messages.py", "glm_agent/messages.py"], places


def _module_name(arg: ast.expr) -> bool:
    """``__name__``, or a child of it: ``f"{__name__}.{server}"``."""
    if isinstance(arg, ast.Name):
        return arg.id == "__name__"
    if isinstance(arg, ast.JoinedStr) and len(arg.values) >= 2:
        first, dot = arg.values[0], arg.values[1]
        return (
            isinstance(first, ast.FormattedValue)
            and _module_name(first.value)
            and isinstance(dot, ast.Constant)
            and str(dot.value).startswith(".")
        )
    return False


def test_every_logger_is_named_after_its_module():
    bad = [
        f"{name}:{node.lineno}"
        for name, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
        and not (len(node.args) == 1 and _module_name(node.args[0]))
    ]
    assert bad == []


def test_stream_events_and_agent_events_have_distinct_names():
    assert not set(parser.__all__) & set(ev.__all__)
    assert ev.TextDelta(1, "x").text == parser.ReplyText("x").text
    for old, new in [("TextDelta", parser.ReplyText), ("CallStarted", parser.CallNamed)]:
        with pytest.warns(DeprecationWarning, match=new.__name__):
            assert getattr(parser, old) is new
        with pytest.warns(DeprecationWarning):
            exec(f"from glm_agent.chatglm3 import {old} as moved", {})  # the old public path still works
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from glm_agent.chatglm3 import CallNamed, ReplyText  # noqa: F401  (the new names do not warn)
    with pytest.raises(AttributeError):
        parser.NoSuchThing  # noqa: B018

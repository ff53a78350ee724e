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
    from glm_agent import _version

    assert _version._installed_version() == "0+unknown"


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


def test_the_workspace_path_and_the_upload_header_are_written_once():
    """/mnt/data and the upload header's lines are defined in chatglm3/prompts.py (the launcher script,
    which imports no package, keeps its own copy of the path)."""
    places: dict[str, list[str]] = {"/mnt/data": [], "#File uploaded": [], "#File: ": []}
    for name, tree in _trees():
        docstrings = {
            id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for text in places:
                    if node.value == text or (text.startswith("#") and text in node.value):
                        places[text].append(name)
    assert places["/mnt/data"] == ["glm_agent/chatglm3/prompts.py", "glm_agent/interpreter/_launch.py"], places
    assert places["#File uploaded"] == places["#File: "] == ["glm_agent/chatglm3/prompts.py"] * 2, places


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


def test_one_logger_variable_name_and_no_format_exceptions():
    """Every module logs through ``logger``; the formatter's layout holds everywhere (no ``# fmt: skip``)."""
    named_log = [
        name
        for name, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "log" for t in node.targets)
    ]
    assert named_log == []
    skips = [
        p.relative_to(PACKAGE.parent).as_posix() for p in SOURCES if "# fmt: skip" in p.read_text(encoding="utf-8")
    ]
    assert skips == []


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

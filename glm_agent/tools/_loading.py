"""Find tools in modules: an imported module, a dotted module path, a ``.py`` file or a folder of them."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from glm_agent.errors import ToolDefinitionError
from glm_agent.tools._tool import Tool

__all__ = ["tools_in_module", "load_module_tools"]

logger = logging.getLogger(__name__)


def tools_in_module(module: ModuleType) -> list[Tool]:
    """Every ``Tool`` object at the top level of ``module`` (only names in ``__all__`` if it has one)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    found: list[Tool] = []
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, Tool) and all(value is not t for t in found):
            found.append(value)
    return found


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"glm_agent_user_tools_{stem}_{digest}"


def _import_file(path: Path) -> ModuleType:
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ToolDefinitionError(f"cannot load tools from {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ToolDefinitionError(
            f"cannot load tools from {path}: syntax error at line {exc.lineno}: {exc.msg}"
        ) from exc
    except ToolDefinitionError as exc:
        sys.modules.pop(name, None)
        raise ToolDefinitionError(f"cannot load tools from {path}: {exc}") from exc
    except SystemExit as exc:  # sys.exit() at import must not end the program that loads the tools
        sys.modules.pop(name, None)
        raise ToolDefinitionError(
            f"cannot load tools from {path}: it called sys.exit({exc.code!r}) while being imported; "
            "a tool module must not exit"
        ) from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ToolDefinitionError(f"cannot load tools from {path}: {type(exc).__name__}: {exc}") from exc
    logger.debug("imported tool module %s from %s", name, path)
    return module


def _import_dotted(source: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        if exc.name and source.startswith(exc.name):
            raise ToolDefinitionError(
                f"cannot load tools from {source!r}: no such file, folder or importable module "
                "(pass a .py file, a folder of them, or a dotted module path on sys.path)"
            ) from exc
        raise ToolDefinitionError(f"cannot load tools from {source!r}: {type(exc).__name__}: {exc}") from exc
    except ToolDefinitionError as exc:
        raise ToolDefinitionError(f"cannot load tools from {source!r}: {exc}") from exc
    except SystemExit as exc:
        raise ToolDefinitionError(
            f"cannot load tools from {source!r}: it called sys.exit({exc.code!r}) while being imported; "
            "a tool module must not exit"
        ) from None
    except Exception as exc:
        raise ToolDefinitionError(f"cannot load tools from {source!r}: {type(exc).__name__}: {exc}") from exc


def _no_tools(where: Any) -> ToolDefinitionError:
    return ToolDefinitionError(
        f"no tools found in {where}: decorate functions with @tool (from glm_agent import tool) at module level"
    )


def load_module_tools(source: str | Path | ModuleType) -> list[Tool]:
    """The tools defined in a module object, a dotted module path, a ``.py`` file or a folder.

    A folder contributes every ``*.py`` file in it whose name does not start with
    ``_``; files without tools are skipped, but a folder without any tool is an error.
    """
    if isinstance(source, ModuleType):
        tools = tools_in_module(source)
        if not tools:
            raise _no_tools(f"module {source.__name__}")
        return tools
    path = Path(source).expanduser()
    text = str(source)
    if path.is_dir():
        tools = []
        for file in sorted(path.resolve().glob("*.py")):
            if not file.name.startswith("_"):
                tools.extend(tools_in_module(_import_file(file)))
        if not tools:
            raise _no_tools(f"folder {path}")
        return tools
    if path.is_file():
        if path.suffix != ".py":
            raise ToolDefinitionError(f"cannot load tools from {path}: expected a .py file")
        tools = tools_in_module(_import_file(path.resolve()))
        if not tools:
            raise _no_tools(path)
        return tools
    if text.endswith(".py") or "/" in text or "\\" in text:
        raise ToolDefinitionError(f"cannot load tools from {text!r}: no such file or folder")
    tools = tools_in_module(_import_dotted(text))
    if not tools:
        raise _no_tools(f"module {text}")
    return tools

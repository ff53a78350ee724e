"""How one run ended, as the session's run loop records it, and the kernel's end-of-cell report."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["RunOutcome", "CellReport", "read_report"]


@dataclass(frozen=True)
class CellReport:
    """What the kernel's end-of-cell hook found (``_bootstrap.BOOTSTRAP``): files written in the
    workspace (paths as the kernel sees them), how often a session limit was hit, and how many
    ended child processes it reaped before the cell (they held the process limit)."""

    files: list[str] = field(default_factory=list)
    more_files: bool = False
    oom_kills: int = 0
    pids_max: int = 0
    reaped: int = 0


@dataclass
class RunOutcome:
    """The run loop's record of one run: its status, count, and what happened to the kernel."""

    status: Literal["ok", "error", "timeout", "died"] = "ok"
    execution_count: int | None = None
    timed_out: bool = False
    restarted: bool = False
    report: CellReport = field(default_factory=CellReport)


def read_report(reply_content: dict[str, Any]) -> CellReport:
    """The report from an ``execute_reply``'s user expression (a repr of a dict; parsed as a literal)."""
    value = reply_content.get("user_expressions", {}).get("glm_agent", {})
    if value.get("status") != "ok":
        return CellReport()
    try:
        data = ast.literal_eval(value["data"]["text/plain"])
    except (KeyError, TypeError, ValueError, SyntaxError, MemoryError, RecursionError):
        return CellReport()
    if not isinstance(data, dict):
        return CellReport()
    files = [path for path in data.get("files", []) if isinstance(path, str)]

    def count(key: str) -> int:
        number = data.get(key, 0)
        return number if isinstance(number, int) and number > 0 else 0

    return CellReport(files, bool(data.get("more_files")), count("oom_kill"), count("max"), count("reaped"))

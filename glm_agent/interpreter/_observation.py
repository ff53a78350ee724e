"""The text the model reads of a run: the output as text in a ```` ```result ```` fence, and every notice.

One place for all of it, so that what the model is told (a timeout, a restart, a limit reached,
files written, a hint for an error) reads alike and is easy to review: the session decides
*when* a notice applies, this module *what it says*.
"""

from __future__ import annotations

import re

from glm_agent.chatglm3.prompts import MNT_DATA
from glm_agent.interpreter._isolation import Isolation
from glm_agent.interpreter._limits import GiB, Limits, MiB
from glm_agent.interpreter._outcome import CellReport
from glm_agent.interpreter._results import IMAGE_MIMES, DisplayOutput, ErrorOutput, Output, StreamOutput

__all__ = [
    "output_text",
    "truncate_middle",
    "format_observation",
    "kernel_stopped",
    "kernel_died",
    "restart_failed",
    "timed_out",
    "report_notices",
    "process_limit",
    "error_hints",
    "LISTED_ENTRIES",
]

_OVERWRITTEN = re.compile(r"[^\n]*\r(?!\n)")  # text a carriage return overwrote (progress bars)
#: entries of the workspace the kernel looks at to list the files a run wrote (``_bootstrap.py``)
LISTED_ENTRIES = 5000


def output_text(output: Output) -> str:
    """How one output reads in an observation: text as is, ``[Image]`` for an image."""
    if isinstance(output, StreamOutput):
        return output.text
    if isinstance(output, DisplayOutput):
        if output.image is not None or any(m in output.data for m in IMAGE_MIMES):
            return "[Image]\n"
        if "text/plain" in output.data:
            return str(output.data["text/plain"]) + "\n"
        mimes = ", ".join(sorted(output.data)) or "empty"
        return f"[{mimes} output]\n"
    if isinstance(output, ErrorOutput):
        return output.text + "\n"
    return output.text


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text`` within ``max_chars``, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    marker = "\n... [{:,} characters omitted] ...\n"
    keep = max(0, max_chars - len(marker.format(len(text))))
    head = keep // 2
    tail = keep - head
    omitted = len(text) - head - tail
    return text[:head] + marker.format(omitted) + (text[-tail:] if tail else "")


def format_observation(body: str, notices: list[str], max_chars: int) -> str:
    """The ChatGLM3 observation: the output in a ```` ```result ```` fence, then any notices."""
    body = _OVERWRITTEN.sub("", body).strip("\n")
    observation = f"```result\n{truncate_middle(body, max_chars)}\n```"
    if notices:
        observation += "\n" + "\n".join(notices)
    return observation


# -- notices --------------------------------------------------------------------------------------
def kernel_stopped(reason: str) -> str:
    return (
        f"[The kernel had stopped since the last run ({reason}) and was restarted: "
        "variables, imports and files opened in earlier runs are gone.]"
    )


def kernel_died(reason: str) -> str:
    return (
        f"[The kernel died while running this code ({reason}) and was restarted: "
        "all variables, imports and state were lost.]"
    )


def restart_failed(error: Exception) -> str:
    return f"[The kernel could not be restarted ({error}); the next run will try again.]"


def timed_out(limit: float, *, restarted: bool) -> str:
    if restarted:
        return (
            f"[Timed out after {limit:g} s. The code did not stop when interrupted, so the kernel was "
            "restarted: all variables, imports and state were lost. Re-run the set-up code you need.]"
        )
    return f"[Timed out after {limit:g} s: the run was interrupted. The kernel's state (variables, imports) is kept.]"


def process_limit(limits: Limits) -> str:
    return (
        f"[The session's limit of {limits.max_processes} processes and threads was reached "
        "(Limits.max_processes): starting more failed. Let processes and threads end before starting new ones.]"
    )


def report_notices(report: CellReport, limits: Limits, kernel_workspace: str) -> list[str]:
    """What the kernel's end-of-cell report adds: files written, limits reached, ended children cleaned up."""
    notices = []
    if report.files:
        names = [path.removeprefix(kernel_workspace + "/") for path in report.files[:20]]
        more = f" and {len(report.files) - 20} more" if len(report.files) > 20 else ""
        notices.append(f"[Files written in {MNT_DATA}: {', '.join(names)}{more}]")
    if report.more_files:
        notices.append(
            f"[{MNT_DATA} holds more than {LISTED_ENTRIES:,} files and folders: the files this run wrote "
            "were looked for among the first of them only.]"
        )
    if report.oom_kills:
        size = f" of {limits.total_memory_bytes / GiB:g} GiB" if limits.total_memory_bytes else ""
        notices.append(
            f"[The session's memory limit{size} (all its processes together) was reached: "
            f"{report.oom_kills} process(es) were killed. Use less memory, e.g. process the data in chunks.]"
        )
    if report.pids_max:
        notices.append(process_limit(limits))
    if report.reaped:
        notices.append(
            f"[Before this run, {report.reaped} child process(es) that had ended without being waited for "
            "were cleaned up: they held the session's process limit.]"
        )
    return notices


def error_hints(error: ErrorOutput, limits: Limits, isolation: Isolation) -> list[str]:
    """What to add when the code raised ``error``: why it happened here, and what to do instead."""
    if error.ename == "StdinNotImplementedError":
        return ["[input() is not available: nobody can type an answer here. Put the value in the code instead.]"]
    if error.ename == "MemoryError" and limits.memory_bytes:
        return [f"[The kernel's memory limit is {limits.memory_bytes / GiB:g} GiB per process.]"]
    starting = any(word in error.text for word in ("fork", "Popen", "spawn", "Process", "Pool"))
    out_of_processes = (error.ename == "BlockingIOError" and starting) or "can't start new thread" in error.evalue
    if out_of_processes and isolation.max_processes and limits.max_processes:
        return [process_limit(limits)]
    if "No space left on device" in error.evalue and limits.workspace_bytes and isolation.enabled:
        return [
            f"[{MNT_DATA} and /tmp hold at most {limits.workspace_bytes / MiB:g} MiB together "
            "(Limits.workspace_bytes): delete files you no longer need.]"
        ]
    return []

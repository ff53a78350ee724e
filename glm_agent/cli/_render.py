"""What the commands show besides events (``glm_agent.render`` shows those): the scripted label, notes."""

from __future__ import annotations

from typing import Any

__all__ = ["scripted_banner", "TEMPORARY_IMAGES"]

TEMPORARY_IMAGES = "the kernel's folder is temporary and removed on exit; keep its files with --workspace DIR"


def scripted_banner(model: Any) -> str:
    """The label every command prints when the 'model' only replays prepared replies."""
    return f"[scripted model] {getattr(model, 'name', 'scripted')}: replies are replayed from a file, not generated"

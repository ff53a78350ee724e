"""Turn a ``--model`` spec into a chat backend (shared by ``glm-agent serve``, ``chat`` and ``run``).

- ``scripted:FILE.json``: a :class:`ScriptedModel` replaying the JSON list of raw replies in FILE;
- ``http://...`` / ``https://...``: an :class:`OpenAIModel` on that OpenAI-compatible base URL (chat mode);
- anything else: a checkpoint directory or hub id for :class:`LocalModel` (needs ``glm-agent[local]``).
"""

from __future__ import annotations

from typing import Any

from glm_agent.errors import ModelError

__all__ = ["load_chat_model"]


def load_chat_model(spec: str, **options: Any) -> Any:
    """The backend named by ``spec``; ``options`` go to the backend's constructor / ``from_pretrained``."""
    spec = spec.strip()
    if not spec:
        raise ModelError(
            "no model given: pass a checkpoint path, a hub id, scripted:FILE.json or an http(s):// server URL"
        )
    if options.get("quantize") and spec.startswith(("scripted:", "http://", "https://")):
        raise ModelError(f"quantize applies to local weights only, not to {spec}; drop --quantize")
    if spec.startswith("scripted:"):
        from glm_agent.models.scripted import ScriptedModel

        path = spec[len("scripted:") :]
        if not path:
            raise ModelError("scripted: needs a file, as in scripted:replies.json (a JSON list of raw replies)")
        return ScriptedModel.from_file(path, **options)
    if spec.startswith(("http://", "https://")):
        from glm_agent.models.openai import OpenAIModel

        return OpenAIModel(spec, **options)
    try:
        from glm_agent.models.local import LocalModel
    except ImportError as exc:
        raise ModelError(
            f"local weights need the 'local' extra ({exc}); install it with: pip install 'glm-agent[local]'"
        ) from None
    return LocalModel.from_pretrained(spec, **options)

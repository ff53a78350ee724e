"""Turn a ``--model`` spec into a chat backend (shared by ``glm-agent serve``, ``chat`` and ``run``).

- ``scripted:FILE.json``: a :class:`ScriptedModel` replaying the JSON list of raw replies in FILE;
- ``http://...`` / ``https://...``: an :class:`OpenAIModel` on that OpenAI-compatible base URL (chat mode);
- anything else: a checkpoint directory or hub id for :class:`LocalModel` (needs ``glm-agent[local]``).
"""

from __future__ import annotations

from typing import Any

from glm_agent.errors import ModelError

__all__ = ["load_chat_model"]

#: options that only local weights take, and their command-line flags
_LOCAL_ONLY = {
    "quantize": "--quantize",
    "kv_cache_bytes": "--kv-cache-size",
    "prompt_cache_dir": "--prompt-cache",
    "prompt_cache_bytes": "--prompt-cache-size",
    "max_batch": "--max-batch",
    "share_prefill": "--share-prefill",
}


def load_chat_model(spec: str, **options: Any) -> Any:
    """The backend named by ``spec``; ``options`` go to the backend's constructor / ``from_pretrained``."""
    spec = spec.strip()
    if not spec:
        raise ModelError(
            "no model given: pass a checkpoint path, a hub id, scripted:FILE.json or an http(s):// server URL"
        )
    local_only = [name for name in _LOCAL_ONLY if options.get(name) is not None]
    if local_only and spec.startswith(("scripted:", "http://", "https://")):
        flags = ", ".join(_LOCAL_ONLY[name] for name in local_only)
        verb = "applies" if len(local_only) == 1 else "apply"
        raise ModelError(
            f"{flags} {verb} to local weights only, not to {spec}; drop {'it' if verb == 'applies' else 'them'}"
        )
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

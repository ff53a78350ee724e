"""The local engine: forward passes over a GLM model's weights, the step loop that decodes many sequences
together, decoding, and the KV cache for every conversation.

It sees token ids only (no messages, no tools). :mod:`glm_agent.models.local` drives it.
"""

from __future__ import annotations

from glm_agent.engine._batch import DEFAULT_MAX_BATCH, DEFAULT_STEP_RATIO, BatchEngine, Job
from glm_agent.engine._decoding import IncrementalDetokenizer, Sampler, StopStrings
from glm_agent.engine._fingerprint import model_fingerprint, weights_digest
from glm_agent.engine._kv_store import KVStore
from glm_agent.engine._prefix_cache import PrefixCache, common_prefix_length
from glm_agent.engine._prompt_cache import PromptCache
from glm_agent.engine._runner import KVRunner, LeanGlmRunner, Runner, make_runner

__all__ = [
    "BatchEngine",
    "Job",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_STEP_RATIO",
    "IncrementalDetokenizer",
    "KVRunner",
    "KVStore",
    "LeanGlmRunner",
    "PrefixCache",
    "PromptCache",
    "Runner",
    "Sampler",
    "StopStrings",
    "common_prefix_length",
    "make_runner",
    "model_fingerprint",
    "weights_digest",
]

"""Tests that need glm-agent's own CPU kernels (a C compiler and AVX-512 BF16 and VNNI)."""

from __future__ import annotations

import os

import pytest

from glm_agent._cpu.native import native_kernels

needs_native = pytest.mark.skipif(  # .ci/run requires it: there these tests run, never skip
    native_kernels() is None and os.environ.get("GLM_AGENT_REQUIRE_NATIVE") != "1",
    reason="glm-agent's CPU kernels cannot be built or run here (they need a C compiler and AVX-512 BF16)",
)

"""Degenerate sampling values (issue 16) never fail the sampler: tiny temperatures, huge seeds, overflow."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from glm_agent.engine._decoding import MIN_TEMPERATURE, Sampler  # noqa: E402

SCORES = torch.tensor([0.0, 2.0, 1.9, -1.0, 0.5])


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, MIN_TEMPERATURE / 2])
def test_a_tiny_temperature_is_greedy(temperature: float) -> None:
    assert Sampler(temperature=temperature, seed=1)(SCORES) == 1
    assert Sampler(temperature=temperature)(SCORES) == 1


@pytest.mark.parametrize("seed", [2**64, 2**70, -1, -(2**63), 10**40])
def test_any_integer_seed_works_and_is_reproducible(seed: int) -> None:
    flat = torch.zeros(50)
    first = [Sampler(temperature=1.0, seed=seed)(flat) for _ in range(3)]
    assert len(set(first)) == 1 and 0 <= first[0] < 50
    assert Sampler(temperature=1.0, seed=seed % 2**64)(flat) == first[0]


def test_overflowing_scores_fall_back_to_the_top_id() -> None:
    # a tiny repetition penalty divides a positive score into +inf: softmax would be NaN
    sampler = Sampler(temperature=1.0, repetition_penalty=1e-300, history=[2], seed=0)
    assert sampler(SCORES) == 2
    assert Sampler(temperature=1e-4, seed=3)(torch.tensor([3e38, -3e38, 0.0])) == 0

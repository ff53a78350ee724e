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


def _reference_nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """Top-p by a sort of the whole vocabulary: drop the least likely ids while their mass is <= 1 - top_p."""
    ordered, order = torch.sort(probs.double(), descending=False)
    drop = ordered.cumsum(-1) <= 1 - top_p
    drop[-1] = False  # the most likely id stays
    return set(order[~drop].tolist())


@pytest.mark.parametrize("spread", [0.3, 3.0, 8.0])  # flat (thousands of ids kept) to peaked (a few)
def test_top_p_keeps_the_ids_a_full_sort_keeps(spread: float) -> None:
    from glm_agent.engine._decoding import _nucleus

    generator = torch.Generator().manual_seed(int(spread * 10))
    for _ in range(20):
        probs = (torch.randn(65024, generator=generator, dtype=torch.float64) * spread).softmax(-1)
        for top_p in (0.5, 0.8, 0.95):
            kept, ids = _nucleus(probs, top_p)
            assert set(ids.tolist()) == _reference_nucleus(probs, top_p)
            assert (kept[:-1] >= kept[1:]).all()  # most likely first


def test_sampling_draws_each_kept_id_as_often_as_its_probability() -> None:
    scores = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    probs = scores.softmax(-1)
    top_p = 0.8  # keeps ids 0-2 (mass above id 2: 0.73 < 0.8; above id 3: 0.90)
    expected = probs[:3] / probs[:3].sum()
    sampler = Sampler(temperature=1.0, top_p=top_p, seed=11)
    counts = torch.bincount(torch.tensor([sampler(scores) for _ in range(20_000)]), minlength=6)
    assert counts[3:].sum() == 0
    assert torch.allclose(counts[:3] / 20_000, expected.float(), atol=0.015)
    plain = Sampler(temperature=1.0, seed=12)
    counts = torch.bincount(torch.tensor([plain(scores) for _ in range(20_000)]), minlength=6)
    assert torch.allclose(counts / 20_000, probs, atol=0.015)

"""Random numbers and dice.

``random_number_generator`` is the official ChatGLM3 demo tool, written in the
demo's ``Annotated[T, "description", required]`` convention, to show that such
tools work unchanged. The others show the plain-type-hint style.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import Field

from glm_agent import tool

__all__ = ["random_number_generator", "roll_dice", "random_choice"]

MAX_DICE = 100


@tool
def random_number_generator(
    seed: Annotated[int, "The random seed used by the generator", True],
    range: Annotated[tuple[int, int], "The range of the generated numbers", True],
) -> int:
    """Generates a random number x, s.t. range[0] <= x < range[1]"""
    if not isinstance(seed, int):
        raise TypeError("Seed should be an integer")
    if range[0] >= range[1]:
        raise ValueError("the range must be (low, high) with low < high")
    return random.Random(seed).randrange(range[0], range[1])


@tool
def roll_dice(
    count: Annotated[int, Field(ge=1, le=MAX_DICE, description="How many dice to roll")] = 1,
    sides: Annotated[int, Field(ge=2, le=1000, description="Sides per die")] = 6,
) -> dict[str, object]:
    """Roll dice and report each die and the total."""
    rolls = [random.randint(1, sides) for _ in range(count)]
    return {"rolls": rolls, "total": sum(rolls)}


@tool
def random_choice(options: list[str], count: int = 1, unique: bool = True) -> list[str]:
    """Pick items at random from a list.

    Args:
        options: The items to choose from.
        count: How many items to pick.
        unique: Whether an item may be picked only once.
    """
    if not options:
        raise ValueError("options is empty; give at least one item")
    if count < 1:
        raise ValueError("count must be at least 1")
    if unique:
        if count > len(options):
            raise ValueError(f"cannot pick {count} different items from {len(options)} options")
        return random.sample(options, count)
    return random.choices(options, k=count)

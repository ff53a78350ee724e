"""The official ChatGLM3 demo's tools, written for its ``register_tool``, working unchanged with ``@tool``.

    python examples/official_demo_tools.py                          # scripted replies, offline
    python examples/official_demo_tools.py --model THUDM/chatglm3-6b "What's the weather in Shanghai?"

The two functions below are the ``tools_using_demo/tool_register.py`` tools of THUDM/ChatGLM3
(Apache-2.0) with only the decorator changed: their ``Annotated[type, 'description', required]``
parameters become a JSON schema with those descriptions and required flags. ``get_weather`` asks wttr.in, so
it needs the network; the scripted replies only call ``random_number_generator``.
"""

from __future__ import annotations

import argparse
import json
from typing import Annotated

from _common import choose_model, example_args, run_example, show

from glm_agent import Agent, tool

QUESTION = "Generate a random number between 1 and 100 with seed 42."


@tool
def random_number_generator(
    seed: Annotated[int, "The random seed used by the generator", True],
    range: Annotated[tuple[int, int], "The range of the generated numbers", True],
) -> int:
    """
    Generates a random number x, s.t. range[0] <= x < range[1]
    """
    if not isinstance(seed, int):
        raise TypeError("Seed must be an integer")
    if not isinstance(range, tuple):
        raise TypeError("Range must be a tuple")
    if not isinstance(range[0], int) or not isinstance(range[1], int):
        raise TypeError("Range must be a tuple of integers")

    import random

    return random.Random(seed).randint(*range)


@tool
def get_weather(
    city_name: Annotated[str, "The name of the city to be queried", True],
) -> str:
    """
    Get the current weather for `city_name`
    """

    if not isinstance(city_name, str):
        raise TypeError("City name must be a string")

    key_selection = {
        "current_condition": ["temp_C", "FeelsLikeC", "humidity", "weatherDesc", "observation_time"],
    }
    import requests

    try:
        resp = requests.get(f"https://wttr.in/{city_name}?format=j1")
        resp.raise_for_status()
        resp = resp.json()
        ret = {k: {_v: resp[k][0][_v] for _v in v} for k, v in key_selection.items()}
    except:  # noqa: E722 (the official demo, unchanged)
        import traceback

        ret = "Error encountered while fetching weather data!\n" + traceback.format_exc()

    return str(ret)


def main(args: argparse.Namespace) -> int:
    model, _ = choose_model(args.model, "official_demo_tools.json")
    with Agent(model, tools=[random_number_generator, get_weather]) as agent:
        print("The tools as the model sees them (in the system message):")
        print(json.dumps(agent.messages[0].tools, indent=2, ensure_ascii=False))
        print(f"\nQ: {args.question}")
        answered = False
        for event in agent.stream(args.question):
            show(event)
            answered = answered or event.type == "final_answer"
    return 0 if answered else 1


if __name__ == "__main__":
    run_example(main, example_args(__doc__.splitlines()[0], QUESTION))

"""A tools agent: current weather and arithmetic with the ready-made tools in ``tools/``.

    python examples/tools_agent.py                                  # scripted replies, offline
    python examples/tools_agent.py --model THUDM/chatglm3-6b        # a real ChatGLM3 (and the network)
    GLM_AGENT_MODEL=/path/to/chatglm3-6b python examples/tools_agent.py "Is it colder in Oslo or Rome?"

With the scripted replies, ``get_weather`` does not go to the network: it reads the sample
Open-Meteo answer in ``examples/scripted/open_meteo_sample.json`` through an ``httpx`` mock
transport (the same tool code, only the HTTP layer is replaced), and says so.
"""

from __future__ import annotations

import argparse
import json
from types import ModuleType

import httpx
from _common import SCRIPTED, TOOLS, choose_model, example_args, import_file, run_example, show

from glm_agent import Agent
from glm_agent.tools import load_tools

QUESTION = "What's the weather in Beijing right now, and how warm is that in Fahrenheit?"


def sample_weather(weather: ModuleType) -> httpx.MockTransport:
    """Answer Open-Meteo's two endpoints (``weather``'s URLs) from a saved sample instead of the network."""
    sample = json.loads((SCRIPTED / "open_meteo_sample.json").read_text(encoding="utf-8"))

    def answer(request: httpx.Request) -> httpx.Response:
        endpoint = "geocoding" if str(request.url).startswith(weather.GEOCODING_URL) else "forecast"
        return httpx.Response(200, json=sample[endpoint])

    return httpx.MockTransport(answer)


def main(args: argparse.Namespace) -> int:
    model, scripted = choose_model(args.model, "tools_agent.json")
    tools = load_tools([TOOLS / "calculator.py", TOOLS / "clock.py"])
    weather = import_file(TOOLS / "weather.py")
    if scripted:
        print("[offline] get_weather reads examples/scripted/open_meteo_sample.json instead of the network\n")
        tools.register(weather.make_weather_tool(transport=sample_weather(weather)))
    else:
        tools.register(weather.get_weather)

    with Agent(model, tools=tools) as agent:
        print(f"Q: {args.question}")
        answered = False
        for event in agent.stream(args.question):
            show(event)
            answered = answered or event.type == "final_answer"
    return 0 if answered else 1


if __name__ == "__main__":
    run_example(main, example_args(__doc__.splitlines()[0], QUESTION))

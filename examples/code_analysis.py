"""Data analysis with the code interpreter: the model writes numpy + matplotlib code, a Jupyter kernel runs it.

    python examples/code_analysis.py                                # scripted replies, a real kernel
    python examples/code_analysis.py --model THUDM/chatglm3-6b      # a real ChatGLM3 writes the code
    python examples/code_analysis.py --out /tmp/analysis "Plot y = x**2 for x in 0..10"

The code runs in a real kernel (sandboxed where the machine allows); the chart and the session
as a notebook are saved under ``--out`` (default ``examples/output/``), and their paths printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import EXAMPLES, choose_model, example_args, run_example, show

from glm_agent import Agent, CodeInterpreter

QUESTION = (
    "Monthly sales of our shop (units), January to December: 120, 135, 150, 145, 170, 190, 210, 205, 180, "
    "165, 220, 260. Give me the mean, the standard deviation, the best month and the largest month-over-month "
    "growth, and plot the sales with a trend line."
)


def main(args: argparse.Namespace) -> int:
    model, _ = choose_model(args.model, "code_analysis.json")
    out = Path(args.out).resolve()
    # the kernel works in `out` (the code sees it as /mnt/data); a workspace we name is kept after close
    with (
        CodeInterpreter(workspace=out, timeout=60) as interpreter,
        Agent(model, code_interpreter=interpreter, language="en") as agent,
    ):
        print(f"Q: {args.question}")
        answer, images = None, []
        for event in agent.stream(args.question):
            show(event)
            if event.type == "code_finished":
                images += event.images
            elif event.type == "final_answer":
                answer = event.text
        notebook = agent.save_notebook(out / "code_analysis.ipynb")
    print()
    print(f"answer:   {answer}")
    for image in images:
        print(f"image:    {image}")
    print(f"notebook: {notebook}")
    return 0 if answer is not None else 1


if __name__ == "__main__":
    parser = example_args(__doc__.splitlines()[0], QUESTION)
    parser.add_argument(
        "--out", default=EXAMPLES / "output", help="where the chart and notebook go (default: %(default)s)"
    )
    run_example(main, parser)

"""``glm-agent convert``: rewrite an official ChatGLM3 checkpoint in transformers' native GLM format."""

from __future__ import annotations

import argparse
import sys

from glm_agent.cli._agent import Subparsers, add_quantize_arguments
from glm_agent.errors import CheckpointError

__all__ = ["add_command"]


def add_command(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``glm-agent convert SRC DST`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an official ChatGLM3 checkpoint to transformers' native GLM format",
        description="Write SRC (a ChatGLM3 checkpoint directory or hub id) to DST as a native GlmForCausalLM checkpoint.",
    )
    parser.add_argument("src", help="official checkpoint directory, or a hub id such as THUDM/chatglm3-6b")
    parser.add_argument("dst", help="new directory for the native checkpoint")
    parser.add_argument(
        "--dtype", default="auto", help="float32, bfloat16, float16, or auto (keep the checkpoint's; default)"
    )
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    add_quantize_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    parser.add_argument(
        "--allow-download", action="store_true", help="download a hub id that is not in the local cache"
    )
    parser.set_defaults(handler=_run_convert)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    from glm_agent.chatglm3.checkpoint import convert_checkpoint

    try:
        target = convert_checkpoint(
            args.src,
            args.dst,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            allow_download=args.allow_download,
            quantize=args.quantize,
            group_size=args.group_size,
        )
    except CheckpointError as exc:
        print(f"glm-agent convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0

"""``glm-agent convert``: rewrite an official ChatGLM3 checkpoint in transformers' native GLM format."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from glm_agent.chatglm3.checkpoint import load_model, resolve_checkpoint
from glm_agent.errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["convert_checkpoint", "add_convert_command"]


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | None = "auto",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    allow_download: bool = False,
) -> Path:
    """Write ``src`` (official layout or hub id) to ``dst`` as config.json + safetensors shards.

    ``GlmForCausalLM.from_pretrained(dst)`` loads the result with no remote code. The
    tokenizer.model is copied alongside so that ``LocalModel.from_pretrained(dst)`` works too.
    ``dtype="auto"`` keeps the checkpoint's dtype. Returns ``dst``.
    """
    source = resolve_checkpoint(src, allow_download=allow_download)
    target = Path(dst).expanduser()
    if target.resolve() == source.resolve():
        raise CheckpointError(f"{target} is the source checkpoint; choose another destination directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{target} is not empty; choose a new directory or pass overwrite=True (CLI: --overwrite)"
        )
    model = load_model(source, dtype=dtype, device="cpu")
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, max_shard_size=max_shard_size)
    if (source / "tokenizer.model").is_file():
        shutil.copyfile(source / "tokenizer.model", target / "tokenizer.model")
    else:
        logger.warning("%s has no tokenizer.model; copy it to %s before using LocalModel", source, target)
    logger.info("converted %s to %s", source, target)
    return target


def add_convert_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    parser.add_argument(
        "--allow-download", action="store_true", help="download a hub id that is not in the local cache"
    )
    parser.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    try:
        target = convert_checkpoint(
            args.src,
            args.dst,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            allow_download=args.allow_download,
        )
    except CheckpointError as exc:
        print(f"glm-agent convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0

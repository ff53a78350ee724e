"""ChatGLM3's tokenizer on plain sentencepiece, and its chat template as token ids."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import sentencepiece as spm

from glm_agent.errors import CheckpointError
from glm_agent.messages import MessageLike, SystemMessage, to_message

__all__ = ["ChatGLM3Tokenizer", "SPECIAL_TOKENS", "format_system_content"]

#: Special tokens, appended after the SentencePiece pieces in this order.
SPECIAL_TOKENS = (
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)

_ROLE_TOKENS = {
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "observation": "<|observation|>",
}


def format_system_content(content: str, tools: list[dict[str, Any]] | None) -> str:
    """The system text the model reads: tools are appended as indented JSON, as in training."""
    if tools is None:
        return content
    return content + "\n" + json.dumps(tools, indent=4, ensure_ascii=False)


class ChatGLM3Tokenizer:
    """Encodes text and builds prompts exactly as the official ``ChatGLMTokenizer`` does.

    Role tokens enter a prompt only through :meth:`apply_chat_template`; the text
    ``"<|user|>"`` inside content encodes as ordinary pieces, so content cannot forge a turn.
    """

    def __init__(self, model_file: str | Path) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(
                f"no tokenizer model at {path}; pass a ChatGLM3 checkpoint directory or its tokenizer.model"
            )
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is not a valid SentencePiece tokenizer model: {exc}") from None
        self.path = path
        self.sp_vocab_size = self.sp.GetPieceSize()
        self.special_ids: dict[str, int] = {tok: self.sp_vocab_size + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.special_tokens: dict[int, str] = {i: tok for tok, i in self.special_ids.items()}
        self.vocab_size = self.sp_vocab_size + len(SPECIAL_TOKENS)
        self.eos_id = self.sp.eos_id()
        self.bos_id = self.sp.bos_id()
        self.pad_id = self.unk_id = self.sp.unk_id()
        self.gmask_id = self.special_ids["[gMASK]"]
        self.sop_id = self.special_ids["sop"]
        self.system_id = self.special_ids["<|system|>"]
        self.user_id = self.special_ids["<|user|>"]
        self.assistant_id = self.special_ids["<|assistant|>"]
        self.observation_id = self.special_ids["<|observation|>"]
        self.role_ids = {role: self.special_ids[tok] for role, tok in _ROLE_TOKENS.items()}
        #: generation stops on these: eos, <|user|>, <|observation|> (not <|assistant|>)
        self.stop_ids: tuple[int, ...] = (self.eos_id, self.user_id, self.observation_id)
        self._newline_ids = self.encode("\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ChatGLM3Tokenizer:
        """``path`` is a checkpoint directory holding ``tokenizer.model``, or the file itself."""
        path = Path(path)
        if path.is_dir():
            model_file = path / "tokenizer.model"
            if not model_file.is_file():
                raise CheckpointError(
                    f"no tokenizer.model in {path}; copy the ChatGLM3 tokenizer.model there or pass its path"
                )
            return cls(model_file)
        if not path.exists():
            raise CheckpointError(
                f"{path} does not exist; pass a ChatGLM3 checkpoint directory or a tokenizer.model file"
            )
        return cls(path)

    def fingerprint(self) -> bytes:
        """The bytes that define this tokenizer: its SentencePiece model and the special tokens' ids."""
        return self.sp.serialized_model_proto() + repr(sorted(self.special_ids.items())).encode()

    @cached_property
    def max_piece_bytes(self) -> int:
        """The most UTF-8 bytes one ordinary token stands for (a text of n bytes has >= n / this tokens).

        Scans the vocabulary once per tokenizer (tens of milliseconds), not per server or request.
        """
        return max(len(self.sp.IdToPiece(i).replace("\u2581", " ").encode("utf-8")) for i in range(self.sp_vocab_size))

    # -- plain text ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """SentencePiece ids of ``text``: no special tokens, no bos/eos, one dummy-prefix ``▁``."""
        ids: list[int] = self.sp.EncodeAsIds(text)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids are written as their names, padding-row ids as nothing.

        Each run of ordinary ids is decoded by SentencePiece, which drops the run's leading
        dummy-prefix space (so a reply decodes as ``"\n 你好"``, as the official decode does).
        """
        return self._decode(ids, keep_prefix_space=False)

    def _decode(self, ids: Iterable[int], keep_prefix_space: bool) -> str:
        out: list[str] = []
        run: list[int] = []

        def flush() -> None:
            text = self.sp.DecodeIds(run)
            if keep_prefix_space and self.sp.IdToPiece(run[0]).startswith("\u2581"):
                text = " " + text
            out.append(text)
            run.clear()

        for i in ids:
            i = int(i)
            if i < self.sp_vocab_size:
                run.append(i)
                continue
            if run:
                flush()
            out.append(self.special_tokens.get(i, ""))
        if run:
            flush()
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        if i < self.sp_vocab_size:
            return self.sp.IdToPiece(i)
        return self.special_tokens.get(i, "")

    def __len__(self) -> int:
        return self.vocab_size

    # -- chat template ------------------------------------------------------------------------
    def encode_message(self, role: str, metadata: str, content: str) -> list[int]:
        """``<|role|> encode(metadata + "\\n") encode(content)``: two separate encodes, as the official code."""
        try:
            role_id = self.role_ids[role]
        except KeyError:
            raise ValueError(f"unknown role {role!r}; expected one of {sorted(self.role_ids)}") from None
        return [role_id, *self.encode(metadata + "\n"), *self.encode(content)]

    def apply_chat_template(self, messages: Sequence[MessageLike], add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids, equal to the official ``build_chat_input`` (generation prompt = bare ``<|assistant|>``)."""
        ids = [self.gmask_id, self.sop_id]
        for message in messages:
            ids += self.encode_message(*_role_metadata_content(message))
        if add_generation_prompt:
            ids.append(self.assistant_id)
        return ids

    def render_text(self, messages: Sequence[MessageLike], add_generation_prompt: bool = True) -> str:
        """The same prompt as display text, as the official tokenizer's decode of the prompt shows it.

        ``[gMASK]sop<|user|> \\n 你好<|assistant|>``: each message's dummy-prefix space is kept visible.
        For logs and for servers that take text.
        """
        return self._decode(self.apply_chat_template(messages, add_generation_prompt), keep_prefix_space=True)

    def __repr__(self) -> str:
        return f"ChatGLM3Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _role_metadata_content(message: MessageLike) -> tuple[str, str, str]:
    msg = to_message(message)
    if isinstance(msg, SystemMessage):
        return "system", msg.metadata, format_system_content(msg.content, msg.tools)
    return msg.role, msg.metadata, msg.content

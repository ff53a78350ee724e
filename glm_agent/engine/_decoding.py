"""Token choice and exact streaming detokenization for local generation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["Sampler", "IncrementalDetokenizer", "StopStrings"]

_REPLACEMENT = "\ufffd"
MIN_TEMPERATURE = 1e-5


class Sampler:
    """Picks the next id from float32 logits: greedy at temperature 0, else temperature/top-k/top-p sampling.

    Repetition penalty follows transformers (over prompt and generated ids: positive scores are
    divided by it, negative ones multiplied). Non-finite scores are replaced as the official
    ChatGLM3 code does (all zero, id 5 very likely), so generation never samples from NaN.
    Degenerate values never fail: a temperature below ``MIN_TEMPERATURE`` is greedy (the
    distribution is one id anyway), a distribution that overflows to inf/NaN falls back to the
    most likely id, and any integer seed works (taken modulo 2**64, torch's seed range).
    """

    def __init__(
        self,
        *,
        temperature: float,
        top_p: float = 1.0,
        top_k: int | None = None,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        history: Sequence[int] = (),
    ) -> None:
        self.temperature = temperature if temperature >= MIN_TEMPERATURE else 0.0
        self.top_p = top_p
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.seed = seed
        self.generator: torch.Generator | None = None  # made on the logits' device at the first call
        self._history = sorted(set(history)) if repetition_penalty != 1.0 else None
        self._seen: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor) -> int:
        scores = logits.float()
        if self._history is not None and self._seen is None:
            self._seen = torch.tensor(self._history, dtype=torch.long, device=scores.device)
        if self.temperature > 0 and self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed % 2**64)
        if not torch.isfinite(scores.sum()):  # any NaN/inf makes the sum non-finite (10x cheaper than isfinite().all())
            logger.warning("non-finite scores from the model; replaced as the official ChatGLM3 code does")
            scores = torch.zeros_like(scores)
            scores[5] = 5e4
        if self._seen is not None and self._seen.numel():
            picked = scores.gather(0, self._seen)
            picked = torch.where(picked < 0, picked * self.repetition_penalty, picked / self.repetition_penalty)
            scores = scores.scatter(0, self._seen, picked)
        if self.temperature == 0:
            token = int(scores.view(1, -1).argmax(-1))  # first maximum, as torch.argmax
        else:
            token = self._sample(scores / self.temperature)
        self._remember(token)
        return token

    def _sample(self, scores: torch.Tensor) -> int:
        """One id drawn from ``softmax(scores)`` cut to top-k and top-p, by inverse CDF over the kept ids.

        Top-p keeps the most likely ids while the mass above an id is below ``top_p`` (the most
        likely id always). Its ids come from a partial top-k of 256 ids where they hold ``top_p``
        (else from a sort of the whole vocabulary): over ChatGLM3's 65,024 ids the sort takes 5.4 ms
        and ``torch.multinomial`` another 2 ms a token on this CPU, as long as a 100M model's whole
        step; the top-k and the inverse CDF about 0.3 ms.
        """
        if self.top_k is not None and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = scores.softmax(-1)
        if not torch.isfinite(probs.sum()):  # scores that overflowed (a tiny repetition penalty): take the top id
            return int(scores.nan_to_num(nan=float("-inf")).argmax())
        ids: torch.Tensor | None = None
        if self.top_p < 1.0:
            probs, ids = _nucleus(probs, self.top_p)
        cdf = probs.cumsum(0)
        draw = torch.rand((), generator=self.generator, dtype=cdf.dtype) * cdf[-1]
        index = min(int(torch.searchsorted(cdf, draw, right=True)), cdf.numel() - 1)
        return int(ids[index]) if ids is not None else index

    def _remember(self, token: int) -> None:
        if self._seen is not None and not bool((self._seen == token).any()):
            self._seen = torch.cat([self._seen, self._seen.new_tensor([token])])


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p ids of ``probs`` and their probabilities, most likely first: each id whose more likely
    ids hold less than ``top_p`` of the mass (so at least the most likely id)."""
    top, ids = torch.topk(probs, min(256, probs.numel()))  # a trained model's nucleus is most often within
    mass = top.cumsum(0)
    if mass[-1] < top_p:  # a flat distribution (random weights, a high temperature): sort it all, once
        top, ids = torch.sort(probs, descending=True)
        mass = top.cumsum(0)
    kept = min(int(torch.searchsorted(mass, torch.tensor(top_p, dtype=mass.dtype))) + 1, top.numel())
    return top[:kept], ids[:kept]


class IncrementalDetokenizer:
    """Turns ids into text deltas whose concatenation equals ``tokenizer.decode`` of all ids.

    Decoding restarts at token boundaries where decoding is additive (no byte-fallback, control
    or unknown piece on either side), so each step decodes a short window. A window ending in U+FFFD (a multi-byte
    character still incomplete) is held back until the character completes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.sp = tokenizer.sp
        self.ordinary = tokenizer.sp_vocab_size
        self.ids: list[int] = []
        self.text = ""  # everything emitted
        self._start = 0  # window start in ids
        self._window_emitted = 0  # chars of the window's text already emitted
        self._window_lead = ""  # a space the window's first piece carries that a run-start decode drops

    def push(self, token: int) -> str:
        """Add one id; the text that became certain (possibly empty)."""
        if self.ids and self._window_complete and self._boundary(self.ids[-1], token):
            self._start = len(self.ids)
            self._window_emitted = 0
            self._window_lead = " " if self._starts_with_space(token, self.ids[-1]) else ""
        self.ids.append(token)
        window = self._window_text()
        if window.endswith(_REPLACEMENT):
            self._window_complete = False
            return ""
        self._window_complete = True
        return self._emit(window)

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character appears as U+FFFD, as in a full decode)."""
        if not self.ids:
            return ""
        return self._emit(self._window_text())

    _window_complete = True

    def _emit(self, window: str) -> str:
        delta = window[self._window_emitted :]
        self._window_emitted = len(window)
        self.text += delta
        return delta

    def _window_text(self) -> str:
        return self._window_lead + str(self.tokenizer.decode(self.ids[self._start :]))

    def _sticky(self, token: int) -> bool:
        """Byte pieces join their neighbours into characters; control/unknown pieces change how a run starts."""
        sp = self.sp
        return token < self.ordinary and bool(sp.IsByte(token) or sp.IsControl(token) or sp.IsUnknown(token))

    def _boundary(self, prev: int, token: int) -> bool:
        return not self._sticky(prev) and not self._sticky(token)

    def _starts_with_space(self, token: int, prev: int) -> bool:
        """A run-start decode drops the dummy-prefix space that a mid-run piece keeps."""
        if token >= self.ordinary or prev >= self.ordinary:
            return False  # a special id ends the run: the full decode drops that space too
        return bool(self.sp.IdToPiece(token).startswith("\u2581"))


class StopStrings:
    """Cuts streamed text at the first stop string, holding back a tail that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if not self.stops:
            return delta
        if self.stopped:
            return ""
        self.pending += delta
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        safe = len(self.pending) - self.hold
        if safe <= 0:
            return ""
        out, self.pending = self.pending[:safe], self.pending[safe:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

"""Forward passes of a GLM model over a KV cache that can be cropped: the engine under ``LocalModel``.

Two engines with one interface (``length``, ``forward(ids) -> last logits``, ``crop(n)``):

- :class:`LeanGlmRunner` computes ``GlmForCausalLM``'s forward directly from its weights with
  preallocated KV buffers: no per-token cache concatenation, no mask building, grouped heads
  attended without copying keys, q/k/v in one product. It re-lays out the model's weights in
  place (same values and shapes; the model's own forward still works): q/k/v become views of
  one fused matrix, and on CPU linear weights are stored column-major, which lets the
  matrix-vector products of decoding run near memory bandwidth.
- :class:`TransformersRunner` calls the model itself with a ``DynamicCache``; it serves models
  the lean engine cannot (accelerate-dispatched or offloaded weights, other architectures).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from glm_agent._cpu.memory import keep_freed_memory
from glm_agent._cpu.native import native_kernels
from glm_agent.engine._native_linear import NativeBf16Linear
from glm_agent.engine._packed_linear import RowSlice, pack_fused_qkv, pack_linear, packing_available
from glm_agent.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "KV_LAYOUT_VERSION",
    "KVRunner",
    "KVSlot",
    "exact_rows",
    "Runner",
    "LeanGlmRunner",
    "StageClock",
    "TransformersRunner",
    "make_runner",
]

_GROW = 256  # KV buffers grow in multiples of this many positions
#: the version of how the lean engine computes and lays out keys and values; stored KV from another
#: version is never used (bump it when a change alters the numbers a cached block holds)
KV_LAYOUT_VERSION = 1


class Runner(Protocol):
    length: int

    def forward(self, ids: Sequence[int]) -> torch.Tensor: ...

    def crop(self, length: int) -> None: ...


class KVRunner(Runner, Protocol):
    """A runner whose cache can be read and written as ``[layers, 2, kv heads, positions, head_dim]`` tensors."""

    kv_bytes_per_token: int
    kv_layout: str  # what a stored block's numbers depend on besides the weights (shape, dtype, device)

    @torch.inference_mode()
    def read_kv(self, start: int, end: int) -> torch.Tensor: ...

    @torch.inference_mode()
    def write_kv(self, start: int, kv: torch.Tensor) -> None: ...

    def buffer_bytes(self) -> int: ...


def make_runner(model: Any, engine: str = "auto", *, relayout: bool = True, prefill_chunk: int = 1024) -> Runner:
    """The lean engine when the model allows it (``engine="auto"``), else transformers' own forward.

    ``relayout=False`` keeps the model's weights exactly as they are (slower decoding on CPU),
    for callers that still want to ``save_pretrained`` the model.
    """
    if engine not in ("auto", "lean", "transformers"):
        raise ValueError(f"unknown engine {engine!r}; use 'auto', 'lean' or 'transformers'")
    if any(p.device.type == "cpu" for p in model.parameters()):
        keep_freed_memory()  # page faults on every forward pass otherwise (see glm_agent._cpu.memory)
    if engine != "transformers":
        reason = LeanGlmRunner.unsupported_reason(model)
        if reason is None:
            return LeanGlmRunner(model, prefill_chunk=prefill_chunk, relayout=relayout)
        if engine == "lean":
            raise ModelError(f"the lean engine cannot run this model: {reason}; use engine='transformers'")
        logger.info("using transformers' forward: %s", reason)
    return TransformersRunner(model)


class LeanGlmRunner:
    """``GlmForCausalLM``'s math over its own weights, with a croppable preallocated KV cache."""

    def __init__(self, model: Any, *, prefill_chunk: int = 1024, relayout: bool = True) -> None:
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_length = cfg.max_position_embeddings
        self.prefill_chunk = max(1, prefill_chunk)
        base = model.model
        self.embed = base.embed_tokens.weight
        self.device = self.embed.device
        self.dtype = self.embed.dtype
        self.norm = _rms_norm(base.norm, self.dtype)
        rotary = base.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        # column-major pays off for float32 only: bfloat16 products run 1.8x slower that way
        # (measured at 13696x4096 on AVX-512: 30 ms vs 16.8 ms row-major)
        column_major = relayout and self.device.type == "cpu" and self.dtype == torch.float32
        if column_major:
            _use_column_major(model)
        # bfloat16 on CPU: glm-agent's kernel (1.2-1.4x oneDNN's packed product, see _native_linear), else
        # oneDNN's blocked layout (1.5-7x faster than F.linear per decode product, see _packed_linear)
        on_cpu_bf16 = relayout and self.device.type == "cpu" and self.dtype == torch.bfloat16
        kernels = native_kernels() if on_cpu_bf16 else None
        pack = kernels is None and relayout and self.device.type == "cpu" and packing_available(self.dtype)
        if pack:
            _pack_linears(model)
        projections = [_qkv(layer.self_attn, relayout, column_major, pack, kernels) for layer in base.layers]
        _linear = functools.partial(_plain_linear, kernels=kernels)
        self.lm_head = _linear(model.lm_head)
        self.lm_head_device = _device_of(model.lm_head)
        self.layers = [
            (
                _rms_norm(layer.input_layernorm, self.dtype),
                qkv,
                _linear(layer.self_attn.o_proj),
                _rms_norm(layer.post_attention_layernorm, self.dtype),
                _linear(layer.mlp.gate_up_proj),
                _linear(layer.mlp.down_proj),
                _device_of(layer.self_attn.q_proj),
            )
            for layer, qkv in zip(base.layers, projections, strict=False)
        ]
        self.clock: StageClock | None = None  # set one to time the stages of each forward pass
        products = [fn for layer in self.layers for fn in (layer[1], layer[2], layer[4], layer[5])]
        #: decoding rows multiplied in one call with results bit-identical to each row alone (see exact_rows)
        self._exact_rows = {id(p): exact_rows(p) for p in [*products, self.lm_head]}  # per product, for decoding rows
        #: rows of a step whose every product is exact at once: a prompt's chunk joins decoding rows up to this
        self.decode_rows = min(self._exact_rows.values())
        # glm-agent's bfloat16 kernel computes a prompt's chunks of fewer than DENSE_MIN_ROWS rows: its build
        # counts in what stored keys and values depend on (the quantized layers' builds count in the weights')
        self._kernel_builds = sorted({p.kernels.path.stem for p in products if isinstance(p, NativeBf16Linear)})
        self.slots: list[KVSlot] = []  # every slot's buffers count in buffer_bytes
        self.slot = self.new_slot()  # the slot forward/crop/read_kv/write_kv work on (see use)

    # -- slots: one KV buffer per sequence being generated -----------------------------------
    def new_slot(self) -> KVSlot:
        """A new, empty KV buffer of its own (for one more sequence decoded beside the others)."""
        slot = KVSlot()
        self.slots.append(slot)
        return slot

    def drop_slot(self, slot: KVSlot) -> None:
        """Free a slot's buffers (the current slot cannot be dropped, only emptied)."""
        if slot is not self.slot and slot in self.slots:
            self.slots.remove(slot)

    def use(self, slot: KVSlot) -> None:
        """Make ``slot`` the one ``forward``, ``crop``, ``read_kv`` and ``write_kv`` work on."""
        self.slot = slot

    @property
    def length(self) -> int:
        return self.slot.length

    @length.setter
    def length(self, value: int) -> None:
        self.slot.length = value

    @property
    def keys(self) -> list[torch.Tensor]:
        return self.slot.keys

    @property
    def values(self) -> list[torch.Tensor]:
        return self.slot.values

    @property
    def capacity(self) -> int:
        return self.slot.capacity

    @staticmethod
    def unsupported_reason(model: Any) -> str | None:
        """Why the lean engine cannot run ``model``, or ``None`` when it can."""
        if type(model).__name__ != "GlmForCausalLM":
            return f"{type(model).__name__} is not GlmForCausalLM"
        if any(p.is_meta for p in model.parameters()):
            return "some weights are offloaded (meta tensors)"
        if any(hasattr(m, "_hf_hook") for m in model.modules()):
            return "the model is dispatched with accelerate hooks"
        if not all(type(m.mlp.activation_fn).__name__ in ("SiLU", "SiLUActivation") for m in model.model.layers):
            return "the MLP activation is not SiLU"
        attn = model.model.layers[0].self_attn
        if len({getattr(p, "bias", None) is None for p in (attn.q_proj, attn.k_proj, attn.v_proj)}) != 1:
            return "q/k/v projections mix biases"
        rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
        if rope.get("rope_type", "default") != "default":
            return f"rope_type {rope.get('rope_type')!r} is not supported"
        return None

    # -- cache ------------------------------------------------------------------------------
    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        self.length = max(0, min(self.length, length))

    @property
    def kv_bytes_per_token(self) -> int:
        return int(len(self.layers) * 2 * self.num_kv * self.head_dim * self.dtype.itemsize)

    @property
    def kv_layout(self) -> str:
        shape = f"{len(self.layers)}x2x{self.num_kv}xTx{self.head_dim}"
        builds = "".join(f" bf16-kernel/{build}" for build in self._kernel_builds)
        return f"lean/{KV_LAYOUT_VERSION} {shape} {self.dtype} {self.device.type}{builds}"

    def buffer_bytes(self) -> int:
        """Memory held by the working KV buffers of every slot (each grows with the longest sequence it held)."""
        return sum(slot.capacity for slot in self.slots) * self.kv_bytes_per_token

    @torch.inference_mode()
    def read_kv(self, start: int, end: int) -> torch.Tensor:
        """A copy of positions ``start:end`` of the cache, ``[layers, 2, kv heads, end - start, head_dim]``."""
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"positions {start}:{end} are not in the cache (it holds {self.length})")
        out = torch.empty(
            (len(self.layers), 2, self.num_kv, end - start, self.head_dim), dtype=self.dtype, device=self.device
        )
        for i in range(len(self.layers)):
            out[i, 0] = self.keys[i][:, start:end]
            out[i, 1] = self.values[i][:, start:end]
        return out

    @torch.inference_mode()
    def write_kv(self, start: int, kv: torch.Tensor) -> None:
        """Put stored keys and values at positions ``start:``; the cache then ends after them."""
        count = kv.shape[3]
        if start > self.length:
            raise ValueError(f"cannot write at position {start}: the cache holds {self.length}")
        expected = (len(self.layers), 2, self.num_kv, count, self.head_dim)
        if tuple(kv.shape) != expected or kv.dtype != self.dtype:
            raise ValueError(f"stored keys and values are {tuple(kv.shape)} {kv.dtype}, not {expected} {self.dtype}")
        self._reserve(start + count)
        for i in range(len(self.layers)):
            self.keys[i][:, start : start + count] = kv[i, 0]
            self.values[i][:, start : start + count] = kv[i, 1]
        self.length = start + count

    def _reserve(self, needed: int, slot: KVSlot | None = None) -> None:
        slot = slot or self.slot
        if needed > self.max_length:
            raise ModelError(f"sequence of {needed} tokens exceeds the model's context of {self.max_length}")
        if needed <= slot.capacity:
            return
        capacity = min(self.max_length, max(needed, 2 * slot.capacity, _GROW))
        capacity = min(self.max_length, -(-capacity // _GROW) * _GROW)
        shape = (self.num_kv, capacity, self.head_dim)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            k = torch.empty(shape, dtype=self.dtype, device=layer[-1])
            v = torch.empty(shape, dtype=self.dtype, device=layer[-1])
            if slot.length:
                k[:, : slot.length] = slot.keys[i][:, : slot.length]
                v[:, : slot.length] = slot.values[i][:, : slot.length]
            keys.append(k)
            values.append(v)
        slot.keys, slot.values, slot.capacity = keys, values, capacity

    # -- forward ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, ids: Sequence[int]) -> torch.Tensor:
        """Append ``ids`` to the cache; float32 logits after the last one."""
        if not ids:
            raise ValueError("forward needs at least one token")
        logits = self._forward_chunk(ids[: self.prefill_chunk])
        for start in range(self.prefill_chunk, len(ids), self.prefill_chunk):
            logits = self._forward_chunk(ids[start : start + self.prefill_chunk])
        return logits

    def _forward_chunk(self, ids: Sequence[int]) -> torch.Tensor:
        mark = self.clock.start() if self.clock is not None else _no_mark
        past, count = self.length, len(ids)
        total = past + count
        self._reserve(total)
        tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
        x = F.embedding(tokens, self.embed)  # [T, H]
        cos, sin = self._rotary(past, count)
        mask = self._mask(past, count)
        mark("embedding, rotary tables, mask")
        rep = self.num_heads // self.num_kv
        heads, kv_heads = self.num_heads, self.num_kv
        for i, (ln1, qkv_proj, o_proj, ln2, gate_up_proj, down_proj, device) in enumerate(self.layers):
            if x.device != device:
                x = x.to(device)
                cos, sin, mask = cos.to(device), sin.to(device), mask.to(device) if mask is not None else None
            h = ln1(x)
            mark("norms")
            qkv = qkv_proj(h).view(count, heads + 2 * kv_heads, self.head_dim)
            mark("matmul qkv")
            qk = _apply_rotary(qkv[:, : heads + kv_heads], cos, sin)
            q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
            mark("rotary")
            keys, values = self.keys[i], self.values[i]  # [kv heads, capacity, head_dim]
            keys[:, past:total] = k.transpose(0, 1)
            values[:, past:total] = v.transpose(0, 1)
            # grouped heads: the rep query heads of a KV head attend as rep*T rows of one head
            q = q.view(count, self.num_kv, rep, self.head_dim).permute(1, 2, 0, 3).reshape(self.num_kv, rep * count, -1)
            attn = self._attend(q, keys, values, total, mask, decoding=False)
            attn = attn.view(self.num_kv, rep, count, self.head_dim).permute(2, 0, 1, 3).reshape(count, -1)
            mark("attention (cache write, sdpa)")
            x = x + o_proj(attn)
            mark("matmul attention output")
            h = ln2(x)
            mark("norms")
            gate, up = gate_up_proj(h).chunk(2, dim=-1)
            mark("matmul gate_up")
            h = up * F.silu(gate)
            mark("silu")
            x = x + down_proj(h)
            mark("matmul down")
        self.length = total
        last = self.norm(x[-1:])
        mark("norms")
        logits: torch.Tensor = self.lm_head(last.to(self.lm_head_device))[0]
        mark("matmul output layer")
        return logits.float()

    @torch.inference_mode()
    def forward_batch(
        self, decoding: Sequence[tuple[KVSlot, int]], prefills: Sequence[tuple[KVSlot, Sequence[int]]] = ()
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One step for many sequences: one new token for each decoding slot, and a chunk of each prompt in ``prefills``.

        Returns the float32 next-token logits of each decoding slot, and of each prompt after its
        chunk. The decoding rows share each weight's read (products over up to ``decode_rows`` rows
        at once), and chunks small enough to fit with them join them; a larger chunk's products are
        calls of their own. Every sequence's numbers are the ones ``forward`` gives it alone:
        products whose rows are independent, attention per sequence over its own keys, a chunk
        computed as ``forward`` computes it.
        """
        groups: list[_Group] = []
        slots = [slot for slot, _ in decoding]
        every = [*slots, *(slot for slot, _ in prefills)]
        if len({id(slot) for slot in every}) != len(every):
            raise ValueError("a slot takes part in a step once")
        for slot in slots:
            self._reserve(slot.length + 1, slot)
        counts, ids = [1] * len(slots), [token for _, token in decoding]
        joined: list[int] = []  # the prefills that join the decoding rows, then those with groups of their own
        apart: list[int] = []
        joins = self.joins(len(decoding), [len(chunk_ids) for _, chunk_ids in prefills])
        for index, ((slot, chunk_ids), join) in enumerate(zip(prefills, joins, strict=True)):
            if not chunk_ids:
                raise ValueError("a prefill chunk needs at least one token")
            if len(chunk_ids) > self.prefill_chunk:
                raise ValueError(f"a prefill chunk holds at most {self.prefill_chunk} tokens")
            self._reserve(slot.length + len(chunk_ids), slot)
            if join:
                slots, counts, ids = [*slots, slot], [*counts, len(chunk_ids)], [*ids, *chunk_ids]
                joined.append(index)
            else:
                groups.append(_Group([slot], [len(chunk_ids)], list(chunk_ids), None))
                apart.append(index)
        if slots:
            groups.insert(0, _Group(slots, counts, ids, self._exact_rows, decoding=len(decoding)))
        outs = [self._forward_group(group) for group in groups] if len(groups) == 1 else self._forward_groups(groups)
        logits = [row for out in outs for row in out]  # a row per slot, in the order of the groups' slots
        chunks = dict(zip([*joined, *apart], logits[len(decoding) :], strict=True))
        return logits[: len(decoding)], [chunks[index] for index in range(len(prefills))]

    def joins(self, decoding: int, chunks: Sequence[int]) -> list[bool]:
        """Which of a step's prompt chunks (their lengths, in order) join its ``decoding`` rows' products.

        A chunk joins while the step's rows stay within ``decode_rows``: one read of each weight for the
        step, and its rows take the path they take alone (a chunk this small is below the dense
        products too). The others are computed as groups of their own, each with its own read.
        """
        rows, out = decoding, []
        for count in chunks:
            join = decoding > 0 and rows + count <= self.decode_rows
            rows += count if join else 0
            out.append(join)
        return out

    def _forward_groups(self, groups: list[_Group]) -> list[torch.Tensor]:
        """Several groups through the layers together (each layer's weights stay warm for the next group)."""
        states = [self._embed_group(g) for g in groups]
        for i in range(len(self.layers)):
            states = [self._layer_group(i, g, x) for g, x in zip(groups, states, strict=True)]
        return [self._logits_group(g, x) for g, x in zip(groups, states, strict=True)]

    def _forward_group(self, group: _Group) -> torch.Tensor:
        x = self._embed_group(group)
        for i in range(len(self.layers)):
            x = self._layer_group(i, group, x)
        return self._logits_group(group, x)

    def _embed_group(self, group: _Group) -> torch.Tensor:
        tokens = torch.tensor(group.ids, dtype=torch.long, device=self.device)
        # each sequence's tables computed as forward computes them alone (a vectorised cos over more
        # elements can round another way in the last bit)
        tables = [self._rotary(slot.length, count) for slot, count in zip(group.slots, group.counts, strict=True)]
        group.cos = tables[0][0] if len(tables) == 1 else torch.cat([cos for cos, _ in tables])
        group.sin = tables[0][1] if len(tables) == 1 else torch.cat([sin for _, sin in tables])
        group.masks = [self._mask(slot.length, count) for slot, count in zip(group.slots, group.counts, strict=True)]
        return F.embedding(tokens, self.embed)

    def _layer_group(self, i: int, group: _Group, x: torch.Tensor) -> torch.Tensor:
        ln1, qkv_proj, o_proj, ln2, gate_up_proj, down_proj, device = self.layers[i]
        if x.device != device:
            x = x.to(device)
            group.cos, group.sin = group.cos.to(device), group.sin.to(device)
            group.masks = [mask.to(device) if mask is not None else None for mask in group.masks]
        heads, kv_heads, rep = self.num_heads, self.num_kv, self.num_heads // self.num_kv
        rows = x.shape[0]
        qkv = group.product(qkv_proj, ln1(x)).view(rows, heads + 2 * kv_heads, self.head_dim)
        qk = _apply_rotary(qkv[:, : heads + kv_heads], group.cos, group.sin)
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :]
        parts = []
        start = 0
        for index, (slot, count) in enumerate(zip(group.slots, group.counts, strict=True)):
            past, total = slot.length, slot.length + count
            keys, values = slot.keys[i], slot.values[i]
            keys[:, past:total] = k[start : start + count].transpose(0, 1)
            values[:, past:total] = v[start : start + count].transpose(0, 1)
            qs = q[start : start + count].view(count, kv_heads, rep, self.head_dim)
            qs = qs.permute(1, 2, 0, 3).reshape(kv_heads, rep * count, -1)
            attn = self._attend(qs, keys, values, total, group.masks[index], decoding=index < group.decoding)
            parts.append(attn.view(kv_heads, rep, count, self.head_dim).permute(2, 0, 1, 3).reshape(count, -1))
            start += count
        attn_out = parts[0] if len(parts) == 1 else torch.cat(parts)
        x = x + group.product(o_proj, attn_out)
        gate, up = group.product(gate_up_proj, ln2(x)).chunk(2, dim=-1)
        x = x + group.product(down_proj, up * F.silu(gate))
        if i == len(self.layers) - 1:
            for slot, count in zip(group.slots, group.counts, strict=True):
                slot.length += count
        return x

    def _logits_group(self, group: _Group, x: torch.Tensor) -> torch.Tensor:
        ends = torch.tensor(list(itertools.accumulate(group.counts)), device=x.device) - 1
        last = self.norm(x[ends] if len(group.counts) > 1 else x[-1:])
        logits: torch.Tensor = group.product(self.lm_head, last.to(self.lm_head_device))
        return logits.float()

    def _rotary(self, past: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(past, past + count, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.to(self.device)[None, :]
        cos = (freqs.cos() * self.rope_scaling).to(self.dtype).repeat_interleave(2, dim=-1)[:, None, :]
        sin = (freqs.sin() * self.rope_scaling).to(self.dtype).repeat_interleave(2, dim=-1)[:, None, :]
        return cos, sin

    def _attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        total: int,
        mask: torch.Tensor | None,
        *,
        decoding: bool,
    ) -> torch.Tensor:
        """Attention of ``q [kv heads, rows, head_dim]`` over the first ``total`` cached positions.

        A decoding row goes in one call over every KV head, a head per work item so that every
        thread works: at 600 cached positions on 2 threads 100 us against 340 us for a call per
        head, whose single work item runs on one thread (torch 2.13's CPU flash attention splits
        over batch, heads and query blocks); at 2,000 positions a 6B int4 step takes 108 ms, not 150.
        A prompt's rows (a 1-token chunk included) go a call per head, on contiguous slices: there a
        row's result does not depend on how many rows the call has (with several heads the kernel
        splits the rows by the thread count and a row's last bits change), so a prompt and its
        last token give the same numbers in any split, as reusing stored keys and values needs.
        A decoding row always takes the first path, alone or batched. (``enable_gqa`` is 20x slower.)
        """
        scale = self.head_dim**-0.5
        if decoding:
            out: torch.Tensor = F.scaled_dot_product_attention(
                q[None], keys[None, :, :total], values[None, :, :total], scale=scale
            )
            return out[0]
        return torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[g : g + 1], keys[g : g + 1, :total], values[g : g + 1, :total], attn_mask=mask, scale=scale
                )
                for g in range(q.shape[0])
            ]
        )

    def _mask(self, past: int, count: int) -> torch.Tensor | None:
        if count == 1:
            return None  # one new token sees every cached position
        rows = torch.arange(count, device=self.device)[:, None] + past
        cols = torch.arange(past + count, device=self.device)[None, :]
        mask = cols <= rows  # [T, past+T], True = attend
        return mask.repeat(self.num_heads // self.num_kv, 1)


class KVSlot:
    """One sequence's keys and values: per layer ``[kv heads, capacity, head_dim]`` buffers, ``length`` used."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.capacity = 0
        self.length = 0


class _Group:
    """Rows of one step that go through the layers together: decoding rows (one per slot) or one chunk."""

    def __init__(
        self,
        slots: list[KVSlot],
        counts: list[int],
        ids: list[int],
        rows: dict[int, int] | None,
        decoding: int = 0,
    ) -> None:
        self.slots, self.counts, self.ids = slots, counts, ids
        # per product (by id), the most rows it multiplies at once with each row's result as alone (None: the
        # whole group in one call, as forward does)
        self.rows = rows
        self.decoding = decoding  # the first this many slots are decoding rows (the rest: a prompt's chunk)
        self.cos = self.sin = torch.empty(0)  # the rotary tables, made by _embed_group
        self.masks: list[torch.Tensor | None] = []  # each slot's attention mask, made by _embed_group

    def product(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        limit = x.shape[0] if self.rows is None else self.rows[id(fn)]
        if x.shape[0] <= limit:
            out: torch.Tensor = fn(x)
            return out
        return torch.cat([fn(x[start : start + limit]) for start in range(0, x.shape[0], limit)])


def exact_rows(fn: Any) -> int:
    """How many rows ``fn`` multiplies in one call with each row's result bit-identical to the row alone.

    glm-agent's kernels compute each row as the one-row product does, below the row count where they
    hand over to a dense product; other products (oneDNN, MKL: measured, a single row takes another
    path than several) are called one row at a time for decoding rows.
    """
    from glm_agent.engine._native_linear import DENSE_MIN_ROWS

    if isinstance(fn, NativeBf16Linear):
        return DENSE_MIN_ROWS - 1
    if isinstance(fn, _SeparateQKV):
        return min(exact_rows(p) for p in fn.projections)
    backend = getattr(fn, "backend", "")
    if isinstance(backend, str) and backend.endswith("_native"):
        return max(1, int(getattr(fn, "_dense_min_rows", 2)) - 1)
    return 1


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first ``cos.shape[-1]`` dims in interleaved pairs, as transformers' GLM does."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    rotated = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


def _rms_norm(module: Any, dtype: torch.dtype) -> Any:
    """The fused ``F.rms_norm`` for float32 (one op instead of seven), else the module itself.

    In lower precision transformers' GLM rounds before scaling by the weight; the module keeps that.
    """
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if dtype != torch.float32 or not hasattr(F, "rms_norm") or weight is None or eps is None:
        return module
    return functools.partial(F.rms_norm, normalized_shape=(weight.shape[0],), weight=weight, eps=eps)


class StageClock:
    """Wall time per stage of the lean forward pass (set ``runner.clock = StageClock()``; CPU ops are synchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> Callable[[str], None]:
        self._last = time.perf_counter()
        return self.mark

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def _no_mark(stage: str) -> None:
    return None


class _SeparateQKV:
    """q, k and v as three products over the model's untouched (or quantized) weights, concatenated."""

    def __init__(self, attn: Any) -> None:
        self.projections = tuple(_plain_linear(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj))

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(h) for p in self.projections], dim=-1)


def _qkv(attn: Any, relayout: bool, column_major: bool, pack: bool, kernels: Any = None) -> Any:
    """One callable for q, k and v: a fused (packed) product when the weights allow, else three."""
    if isinstance(attn.q_proj, RowSlice):
        return attn.q_proj.fused
    if relayout and _plain(attn):
        if pack:
            return pack_fused_qkv(attn)
        return _product(*_fuse_qkv(attn, column_major), kernels)
    return _SeparateQKV(attn)


def _pack_linears(model: Any) -> None:
    """Every ``nn.Linear`` outside attention's q/k/v (fused separately) becomes a :class:`PackedLinear`."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]  # names only: each old
    for name in names:  # weight must be freed as soon as its packed twin exists (peak: one extra matrix)
        if name.endswith(("q_proj", "k_proj", "v_proj")):
            continue
        owner_name, _, attr = name.rpartition(".")
        pack_linear(model.get_submodule(owner_name) if owner_name else model, attr)


def _plain(attn: Any) -> bool:
    """Whether q, k and v are ``nn.Linear`` layers (quantized ones are not fused)."""
    return all(isinstance(p, torch.nn.Linear) for p in (attn.q_proj, attn.k_proj, attn.v_proj))


def _plain_linear(module: Any, kernels: Any = None) -> Any:
    """A callable for one projection: glm-agent's bfloat16 kernel (``kernels``) or ``F.linear`` over an
    ``nn.Linear``'s tensors, else the module itself."""
    if isinstance(module, torch.nn.Linear):
        return _product(module.weight, module.bias, kernels)
    return module


def _product(weight: torch.Tensor, bias: torch.Tensor | None, kernels: Any) -> Any:
    """``x W^T + b``: glm-agent's bfloat16 kernel where ``kernels`` are given and take ``weight``, else ``F.linear``."""
    if kernels is not None and NativeBf16Linear.fits(weight):
        return NativeBf16Linear(kernels, weight, bias)
    return functools.partial(F.linear, weight=weight, bias=bias)


def _device_of(module: Any) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()))
    device: torch.device = tensor.device
    return device


def _fuse_qkv(attn: Any, column_major: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    done = getattr(attn, "_glm_agent_fused_qkv", None)
    if done is not None and done[0].data_ptr() == attn.q_proj.weight.data_ptr():
        return done[0], done[1]
    has_bias = projections[0].bias is not None
    with torch.no_grad():
        weight = torch.cat([p.weight for p in projections], dim=0)
        if column_major and weight.shape[0] >= weight.shape[1]:
            weight = weight.t().contiguous().t()
        bias = torch.cat([p.bias for p in projections], dim=0) if has_bias else None
        start = 0
        for p in projections:
            end = start + p.weight.shape[0]
            p.weight.data = weight[start:end]
            if bias is not None:
                p.bias.data = bias[start:end]
            start = end
    attn._glm_agent_fused_qkv = (weight, bias)
    return weight, bias


def _use_column_major(model: Any) -> None:
    """Store linear weights with at least as many outputs as inputs transposed in memory.

    Values and shapes are unchanged. ``F.linear`` then reads such a weight as a contiguous
    ``W.T``, and the matrix-vector products of decoding stream it close to memory bandwidth
    on CPU (measured: the output layer 2.1x, the up-projections 1.5-1.9x faster). Wide
    matrices (the down-projection) are faster row-major and stay so.
    """
    tied = model.model.embed_tokens.weight
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module.weight is tied or not module.weight.is_contiguous():
            continue
        if module.out_features >= module.in_features:
            with torch.no_grad():
                module.weight.data = module.weight.data.t().contiguous().t()


class TransformersRunner:
    """The model's own forward with a ``DynamicCache``: slower per token, works for any causal LM."""

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self._cache_class = DynamicCache
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._device = next(model.parameters()).device
        self.cache: Any = None
        self.length = 0

    def crop(self, length: int) -> None:
        if length >= self.length:
            return
        if length <= 0 or self.cache is None:
            self.cache, self.length = None, 0
            return
        self.cache.crop(length - self.length)  # a negative count removes that many positions
        self.length = length

    @torch.inference_mode()
    def forward(self, ids: Sequence[int]) -> torch.Tensor:
        if self.cache is None:
            self.cache, self.length = self._cache_class(), 0
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self._device)
        out = self.model(input_ids=tokens, use_cache=True, logits_to_keep=1, **{self._cache_kwarg: self.cache})
        self.length += len(ids)
        logits: torch.Tensor = out.logits[0, -1]
        return logits.float()

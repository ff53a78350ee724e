"""Load ChatGLM3 weights into transformers' native ``GlmForCausalLM``, without remote code.

The official checkpoint (``model_type: chatglm``) is read shard by shard into a model built on
the meta device, so peak memory stays near one copy of the weights. ``.bin`` shards are read
with ``weights_only=True``; Python files in a checkpoint directory are never imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm_agent.chatglm3._remap import CHATGLM3_STOP_IDS, check_chatglm3_config, glm_config_kwargs, remap_tensor
from glm_agent.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from glm_agent.quantization import PortableWeight, QuantSpec

logger = logging.getLogger(__name__)

__all__ = [
    "load_model",
    "convert_checkpoint",
    "resolve_checkpoint",
    "read_config",
    "glm_config",
    "default_device",
    "resolve_dtype",
    "weight_files",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "tokenizer.model"]
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_checkpoint(path_or_id: str | os.PathLike[str], *, allow_download: bool = False) -> Path:
    """A local directory for ``path_or_id``: an existing path, or a hub id found in the Hugging Face cache.

    With ``allow_download`` a hub id missing from the cache is downloaded (weights, configs,
    tokenizer.model; never Python files).
    """
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_id)
    if not _HUB_ID.match(text):
        raise CheckpointError(
            f"{text} does not exist; pass a ChatGLM3 checkpoint directory or a hub id like THUDM/chatglm3-6b"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise CheckpointError(
            f"{text} is not a local path and huggingface_hub is not installed; pass a checkpoint directory"
        ) from None
    try:
        return Path(snapshot_download(text, local_files_only=not allow_download, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, network errors
        if allow_download:
            raise CheckpointError(
                f"could not download {text} from the Hugging Face hub ({type(exc).__name__}: {exc})"
            ) from None
        raise CheckpointError(
            f"{text} is not in the Hugging Face cache and downloads are off; download it first "
            f"(`huggingface-cli download {text}`), pass allow_download=True (CLI: --allow-download), "
            "or pass the path of a local checkpoint directory"
        ) from None


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, checked to be ChatGLM3 (``chatglm``) or native GLM (``glm``)."""
    file = directory / "config.json"
    if not file.is_file():
        raise CheckpointError(
            f"no config.json in {directory}; pass a ChatGLM3 checkpoint directory (as THUDM/chatglm3-6b)"
        )
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not readable JSON: {exc}") from None
    model_type = cfg.get("model_type")
    if model_type == "chatglm":
        check_chatglm3_config(cfg, str(file))
    elif model_type != "glm":
        raise CheckpointError(
            f"{file} has model_type {model_type!r}; expected 'chatglm' (official ChatGLM3) or 'glm' (converted by glm-agent convert)"
        )
    return dict(cfg)


def glm_config(cfg: dict[str, Any]) -> GlmConfig:
    """The native ``GlmConfig`` of an official ChatGLM3 config."""
    from transformers import GlmConfig

    return GlmConfig(**glm_config_kwargs(cfg))


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files in index order; a missing shard is an error that names it."""
    for index_name in (
        "quantized.safetensors.index.json",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a valid shard index: {exc}") from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            for file in files:
                if not file.is_file():
                    raise CheckpointError(
                        f"shard {file.name} listed in {index} is missing from {directory}; download it again"
                    )
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors / pytorch_model.bin, or shards with their .index.json"
    )


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device, checkpoint_dtype: str | None = None
) -> torch.dtype:
    """``None`` picks a sensible default: bfloat16 (float16 where unsupported) on a GPU, float32 on CPU.

    ``"auto"`` keeps the checkpoint's own dtype.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dtype = checkpoint_dtype or "float32"
    if dtype is None:
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if kind == "mps" else torch.float32
    name = _DTYPES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise CheckpointError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    chosen: torch.dtype = getattr(torch, name)
    return chosen


def load_model(
    path: str | os.PathLike[str],
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    *,
    allow_download: bool = False,
    progress: bool | None = None,
    quantize: str | None = None,
    group_size: int = 128,
) -> GlmForCausalLM:
    """A ChatGLM3 checkpoint (directory or hub id) as a transformers ``GlmForCausalLM`` in eval mode.

    ``device_map`` (``"auto"`` or a dict, needs accelerate) places layers across devices instead
    of ``device``. ``progress`` shows a bar over shards (``None``: when stderr is a terminal).

    ``quantize="int8"`` or ``"int4"`` (groups of ``group_size`` inputs) quantizes the linear
    layers tensor by tensor while reading, so the full-precision model is never in memory; they
    become :class:`~glm_agent.quantization.QuantizedLinear` modules (the output layer is int8 under
    both schemes; embeddings, norms and biases stay in ``dtype``, which defaults to bfloat16 then).
    A checkpoint written by ``glm-agent convert --quantize`` loads quantized as it is.
    """
    directory = resolve_checkpoint(path, allow_download=allow_download)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; pass the checkpoint directory that holds config.json")
    cfg = read_config(directory)
    if device_map is not None and device is not None:
        raise CheckpointError("pass either device or device_map, not both")
    spec = _quant_spec(cfg, directory, quantize, group_size)
    if spec is not None and device_map is not None:
        raise CheckpointError("quantized weights do not combine with device_map; pass device instead")
    target = str(device) if device is not None else default_device()
    if spec is not None and dtype is None:
        dtype = "bfloat16"  # the int8/int4 kernels are fast with bfloat16 activations, 10-60x slower with float32
    torch_dtype = resolve_dtype(dtype, target, cfg.get("torch_dtype"))  # with a device_map: the best device's default
    if spec is not None and str(torch_dtype) == "torch.float32" and target == "cpu":
        logger.warning(
            "float32 activations make the int8/int4 kernels 10-60x slower than bfloat16; pass dtype='bfloat16'"
        )
    if cfg["model_type"] == "glm" and spec is None:
        model = _load_native(directory, torch_dtype, target, device_map)
    else:
        files = weight_files(directory)
        model = _load_official(directory, files, cfg, torch_dtype, target, device_map, progress, spec)
    model.eval()  # type: ignore[no-untyped-call]
    logger.info("loaded %s (%s, %s%s)", directory, torch_dtype, device_map or target, f", {spec.label}" if spec else "")
    return model


def _quant_spec(cfg: dict[str, Any], directory: Path, quantize: str | None, group_size: int) -> QuantSpec | None:
    from glm_agent.chatglm3._quantized import checkpoint_spec
    from glm_agent.quantization import QuantSpec

    stored = checkpoint_spec(cfg, str(directory / "config.json"))
    try:
        wanted = QuantSpec(quantize, group_size) if quantize not in (None, "", "none") else None
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if stored is not None and wanted is not None and wanted != stored:
        raise CheckpointError(
            f"{directory} is already quantized as {stored.label}; load it without quantize (or with the same "
            f"scheme), or quantize the full-precision checkpoint as {wanted.label}"
        )
    return stored or wanted


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | None = "auto",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    allow_download: bool = False,
    quantize: str | None = None,
    group_size: int = 128,
) -> Path:
    """Write ``src`` (official layout or hub id) to ``dst`` as config.json + safetensors shards.

    ``GlmForCausalLM.from_pretrained(dst)`` loads the result with no remote code. The
    tokenizer.model is copied alongside so that ``LocalModel.from_pretrained(dst)`` works too.
    ``dtype="auto"`` keeps the checkpoint's dtype. Returns ``dst``.

    With ``quantize`` (``"int8"``/``"int4"``) the linear weights are written in glm-agent's
    portable quantized layout (see :mod:`glm_agent.chatglm3._quantized`), tensor by tensor, and
    the rest in ``dtype`` (bfloat16 for ``"auto"``); ``LocalModel.from_pretrained(dst)`` loads it
    quantized on any CPU.
    """
    source = resolve_checkpoint(src, allow_download=allow_download)
    target = Path(dst).expanduser()
    if target.resolve() == source.resolve():
        raise CheckpointError(f"{target} is the source checkpoint; choose another destination directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{target} is not empty; choose a new directory or pass overwrite=True (CLI: --overwrite)"
        )
    if quantize not in (None, "", "none"):
        return _convert_quantized(source, target, dtype, max_shard_size, str(quantize), group_size)
    model = load_model(source, dtype=dtype, device="cpu")
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, max_shard_size=max_shard_size)
    if (source / "tokenizer.model").is_file():
        shutil.copyfile(source / "tokenizer.model", target / "tokenizer.model")
    else:
        logger.warning("%s has no tokenizer.model; copy it to %s before using LocalModel", source, target)
    logger.info("converted %s to %s", source, target)
    return target


def _convert_quantized(
    source: Path, target: Path, dtype: str | None, max_shard_size: str, quantize: str, group_size: int
) -> Path:
    from glm_agent.chatglm3._quantized import write_quantized_checkpoint

    cfg = read_config(source)
    spec = _quant_spec(cfg, source, quantize, group_size)
    assert spec is not None
    if "quantization_config" in cfg:
        raise CheckpointError(f"{source} is already quantized; convert the full-precision checkpoint instead")
    torch_dtype = resolve_dtype("bfloat16" if dtype in (None, "auto") else dtype, "cpu")
    files = weight_files(source)
    if cfg["model_type"] == "glm":
        config = dict(cfg)
        tensors: Iterator[tuple[str, Any]] = (item for file in files for item in _read_shard(file))
    else:
        config = glm_config(cfg).to_dict()
        tensors = (
            pair for file in files for key, tensor in _read_shard(file) for pair in remap_tensor(key, tensor, cfg)
        )
    config["model_type"] = "glm"
    config["architectures"] = ["GlmForCausalLM"]
    write_quantized_checkpoint(
        tensors,
        config,
        target,
        spec,
        tokenizer=source / "tokenizer.model",
        dtype=torch_dtype,
        max_shard_size=max_shard_size,
    )
    logger.info("converted %s to %s (%s)", source, target, spec.label)
    return target


def _load_native(directory: Path, dtype: torch.dtype, device: str, device_map: Any) -> GlmForCausalLM:
    from transformers import GlmForCausalLM

    weight_files(directory)  # a clear error for a missing shard before transformers reads any
    kwargs: dict[str, Any] = {"device_map": device_map} if device_map is not None else {}
    try:
        try:
            model = GlmForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = GlmForCausalLM.from_pretrained(directory, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"could not load the GLM checkpoint in {directory}: {exc}") from None
    return model if device_map is not None else model.to(device)  # type: ignore[arg-type]


def _load_official(
    directory: Path,
    files: list[Path],
    cfg: dict[str, Any],
    dtype: torch.dtype,
    device: str,
    device_map: Any,
    progress: bool | None,
    spec: QuantSpec | None = None,
) -> GlmForCausalLM:
    """Read an official (remapped) or native (``model_type: glm``) checkpoint tensor by tensor into a meta-built model."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from glm_agent.chatglm3._quantized import PartsCollector, is_quantized_linear, spec_for
    from glm_agent.quantization import quantize

    native = cfg["model_type"] == "glm"
    config = GlmConfig(**{k: v for k, v in cfg.items() if k != "quantization_config"}) if native else glm_config(cfg)
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    placement = _placement(model, device_map, dtype) if device_map is not None else None
    expected = dict(model.named_parameters())
    seen: set[str] = set()
    parts = PartsCollector()

    def pairs(key: str, tensor: Any) -> Iterator[tuple[str, Any]]:
        return iter([(key, tensor)]) if native else remap_tensor(key, tensor, cfg)

    for file in _progress(files, progress, directory.name):
        for key, tensor in _read_shard(file):
            split = PartsCollector.split(key) if native and spec is not None else None
            if split is not None:
                module, part = split
                if module + ".weight" not in expected:
                    raise CheckpointError(f"{file.name}: tensor {key!r} belongs to no layer of the model")
                linear: Any = model.get_submodule(module)
                portable = parts.add(module, part, tensor, int(linear.in_features))
                if portable is not None:
                    if (portable.out_features, portable.in_features) != tuple(linear.weight.shape):
                        raise CheckpointError(
                            f"{file.name}: {module} is quantized as [{portable.out_features}, {portable.in_features}], "
                            f"but config.json implies {list(linear.weight.shape)}; the config and the weights do not belong together"
                        )
                    _install_quantized(model, module, portable, device)
                    seen.add(module + ".weight")
                continue
            for name, value in pairs(key, tensor):
                param = expected.get(name)
                if param is None:  # remap only yields names of the native model
                    raise CheckpointError(
                        f"{file.name}: tensor {key!r} maps to {name!r}, which the model does not have"
                    )
                if tuple(value.shape) != tuple(param.shape):
                    raise CheckpointError(
                        f"{file.name}: tensor {key!r} has shape {tuple(value.shape)}, but config.json implies "
                        f"{tuple(param.shape)} for {name}; the config and the weights do not belong together"
                    )
                if spec is not None and is_quantized_linear(name):
                    _install_quantized(
                        model, name.removesuffix(".weight"), quantize(value, spec_for(name, spec)), device
                    )
                    seen.add(name)
                    continue
                where = _device_for(name, placement) if placement is not None else device
                _set_parameter(model, name, value.to(device=where, dtype=dtype, copy=True))
                seen.add(name)
    if parts.incomplete():
        raise CheckpointError(
            f"the quantized checkpoint in {directory} lacks parts of {', '.join(parts.incomplete()[:5])}; convert it again"
        )
    missing = sorted(set(expected) - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"the checkpoint in {directory} lacks weights for {shown}; is a shard incomplete?")
    _rebuild_buffers(model, config, device if placement is None else _device_for("model.rotary_emb", placement))
    model.generation_config.eos_token_id = list(CHATGLM3_STOP_IDS)
    model.generation_config.pad_token_id = config.pad_token_id
    if placement is not None:
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=placement)
        model.hf_device_map = placement
    return model


def _read_shard(file: Path) -> Iterator[tuple[str, Any]]:
    """``(key, tensor)`` of one weight file; ``.bin`` files are read with ``weights_only=True``, memory-mapped."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                names = handle.keys()  # safetensors >= 0.8: the handle itself is not iterable
                for key in names:
                    yield key, handle.get_tensor(key)
        except SafetensorError as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
        return
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (unsafe content), EOFError, zip errors
        raise CheckpointError(f"{file} could not be read as a weights-only PyTorch file: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} does not hold a state dict")
    for key in list(state):
        yield key, state.pop(key)


def _install_quantized(model: Any, module: str, weight: PortableWeight, device: str) -> None:
    """Replace the (meta) ``nn.Linear`` at ``module`` by a :class:`QuantizedLinear`, keeping its bias slot."""
    from glm_agent.quantization import QuantizedLinear

    owner_name, _, attr = module.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    old = getattr(owner, attr)
    quantized = QuantizedLinear(weight, device=device)
    if isinstance(old, QuantizedLinear):
        raise CheckpointError(f"{module} appears twice in the checkpoint")
    quantized.bias = old.bias  # a meta placeholder until the bias is read (or already the real one)
    setattr(owner, attr, quantized)


def _set_parameter(model: Any, name: str, value: torch.Tensor) -> None:
    import torch

    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def _rebuild_buffers(model: Any, config: GlmConfig, device: str) -> None:
    """Recompute non-persistent buffers (rotary frequencies) that the meta-device build left empty."""
    import torch

    rotary = model.model.rotary_emb
    with torch.device("cpu"):
        fresh = type(rotary)(config=config)
    model.model.rotary_emb = fresh.to(device)
    leftover = [name for name, t in model.named_buffers() if t.is_meta]
    if leftover:
        raise CheckpointError(
            f"internal: buffers {leftover} were not initialised; report this with your transformers version"
        )


def _placement(model: Any, device_map: str | dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    try:
        from accelerate import infer_auto_device_map
    except ImportError:
        raise CheckpointError("device_map needs the accelerate package: pip install accelerate") from None
    if isinstance(device_map, str):
        if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            return {"": device_map}
        placement = infer_auto_device_map(model, no_split_module_classes=["GlmDecoderLayer"], dtype=dtype)
    else:
        placement = dict(device_map)
    if any(str(where) == "disk" for where in placement.values()):
        raise CheckpointError(
            "device_map places weights on disk, which glm-agent does not support; add memory or use a smaller dtype"
        )
    return dict(placement)


def _device_for(name: str, placement: dict[str, Any]) -> Any:
    best, where = -1, None
    for prefix, device in placement.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, where = len(prefix), device
    if where is None:
        raise CheckpointError(f"device_map does not place {name}; include it (or '' for everything)")
    return where


def _progress(files: list[Path], progress: bool | None, label: str) -> Any:
    if progress is False or len(files) < 1:
        return files
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return files
    return tqdm(files, desc=f"loading {label}", unit="shard", disable=None if progress is None else not progress)

"""Loading Janus-Pro checkpoints in DeepSeek's or transformers' layout, or a Lightning checkpoint of
this project, and writing transformers' layout.

DeepSeek (`deepseek-ai/Janus-Pro-1B`): config.json with model_type "multi_modality", weights in
`pytorch_model.bin` (pickles: always `weights_only=True`) or shards; its names are translated by
`lit_janus.deepseek_layout`. transformers (`deepseek-community/Janus-Pro-1B`): model_type "janus",
safetensors. Files are read by `lit_janus.weight_files`; exports are replaced atomically
(`lit_janus.atomic`).

Every weight is accounted for. Only two kinds of keys are known to be unused and are dropped with
a message: SigLIP's attention-pooling head (`attn_pool.*`, never called by Janus) and the VQ's
`codebook_used` statistics buffer. Anything else missing or unexpected is an error naming it, and
the model is only assembled after every check passed, so nothing is ever half-loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from lit_janus.atomic import as_plain_files, replace_dir
from lit_janus.config import Config
from lit_janus.deepseek_layout import config_from_deepseek, deepseek_to_transformers, describe_unused, known_unused
from lit_janus.tokenizer import DEFAULT_SYSTEM_PROMPT
from lit_janus.weight_files import CheckpointError, detect_layout, read_json, read_weights

PRETRAINED_CONTEXT = 4096  # Janus-Pro's training sequence length; pretrained directories record none

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# assembling a model
# ---------------------------------------------------------------------------------------------
def init_nonpersistent_buffers(module: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    """Recompute buffers that are not in any state dict (RoPE frequencies, ViT position ids), so a
    model built on the meta device and loaded with `assign=True` (or materialised by FSDP) works."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for m in module.modules():
        if hasattr(m, "inv_freq") and hasattr(m, "rope_type"):
            fn = m.compute_default_rope_parameters if m.rope_type == "default" else ROPE_INIT_FUNCTIONS[m.rope_type]
            inv_freq, m.attention_scaling = fn(m.config, device=device)
            m.inv_freq = inv_freq.to(device)
            m.original_inv_freq = inv_freq.clone().to(device)
        if hasattr(m, "position_ids") and hasattr(m, "num_positions"):
            m.position_ids = torch.arange(m.num_positions, device=device).expand((1, -1))


def build_model(config: Config, state_dict: dict[str, torch.Tensor] | None = None, *,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attn_implementation: str = "sdpa", source: str = "checkpoint"):
    """A `JanusPro` with `state_dict` (transformers' key layout) loaded strictly, or randomly
    initialised when `state_dict` is None."""
    from lit_janus.model import JanusPro

    if state_dict is None:
        model = JanusPro(config, attn_implementation).to(device=device, dtype=dtype)
        # `.to(dtype)` also casts the RoPE frequencies; in bf16, position x frequency is off by up
        # to ~1 rad at position ~600: keep them float32, as transformers' from_pretrained does
        init_nonpersistent_buffers(model, device)
        return model
    with torch.device("meta"):
        model = JanusPro(config, attn_implementation)
    expected = model.janus.state_dict()
    sd = dict(state_dict)
    if "lm_head.weight" not in sd and "model.language_model.embed_tokens.weight" in sd:
        # a checkpoint saved with tied embeddings: Janus-Pro keeps an independent copy
        log.warning("%s has no lm_head.weight; initialising lm_head from embed_tokens (untied copy)", source)
        sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"].clone()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing {len(missing)} key(s) {missing[:6]}, "
            f"unexpected {len(unexpected)} key(s) {unexpected[:6]}"
        )
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{source} has {len(bad)} shape mismatch(es): " + "; ".join(bad[:6]))
    bad = [f"{k} ({sd[k].dtype})" for k, v in expected.items()
           if v.is_floating_point() and not sd[k].is_floating_point()]
    if bad:
        raise CheckpointError(f"{source} holds {len(bad)} weight(s) that are not floating point, where the model "
                              f"has weights: {', '.join(bad[:6])}; was it quantised or written by another tool?")
    # a diverged run saves NaN weights without complaint; they would only show up as blank images or
    # empty answers much later, so refuse them here (one pass over the weights, cheap next to reading them)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(bad)} tensor(s): {', '.join(bad[:6])}; "
                              "the run that wrote it had probably diverged: load an earlier checkpoint")
    model.janus.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                                strict=True, assign=True)
    init_nonpersistent_buffers(model)
    return model.to(device)


def load_tokenizer(directory: str | Path):
    from transformers import AutoTokenizer

    d = Path(directory)
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise CheckpointError(f"{d} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    try:
        if (d / "tokenizer.json").is_file():
            # read tokenizer.json directly: DeepSeek's tokenizer_config names the slow LlamaTokenizer
            # class, and AutoTokenizer would also parse config.json (model_type multi_modality)
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(d))
        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {d}: {e}") from None


def _image_settings(directory: Path, layout: str, image_size: int):
    from lit_janus.processor import ImageSettings

    f = directory / "preprocessor_config.json"
    if not f.is_file():
        return ImageSettings(image_size=image_size)
    p = read_json(f)
    size = p.get("image_size") or (p.get("size") or {}).get("height") or image_size
    if size != image_size:
        raise CheckpointError(f"{f} says image size {size} but the model's grid needs {image_size}")
    return ImageSettings(image_size=size, mean=tuple(p.get("image_mean", (0.5,) * 3)),
                         std=tuple(p.get("image_std", (0.5,) * 3)), min_size=p.get("min_size", 14))


def _system_prompt(directory: Path) -> str:
    """The system prompt a checkpoint's processor uses: processor_config.json's `system_prompt` (DeepSeek's
    key, and ours), else transformers' `use_default_system_prompt` flag (DeepSeek's default text or none),
    else DeepSeek's default, as their VLChatProcessor has it."""
    f = directory / "processor_config.json"
    cfg = read_json(f) if f.is_file() else {}
    if cfg.get("system_prompt") is not None:
        return cfg["system_prompt"]
    if "use_default_system_prompt" in cfg:
        return DEFAULT_SYSTEM_PROMPT if cfg["use_default_system_prompt"] else ""
    return DEFAULT_SYSTEM_PROMPT


def load_pretrained(directory: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                    attn_implementation: str = "sdpa", max_length: int | None = None):
    """(JanusPro, JanusProcessor) from a checkpoint directory in either layout (auto-detected).
    `max_length` (the processor's context) defaults to Janus-Pro's training context, 4096."""
    from lit_janus.processor import JanusProcessor

    d = Path(directory)
    layout = detect_layout(d)
    raw_cfg = read_json(d / "config.json")
    tokenizer = load_tokenizer(d)  # before the (large) weights: fail fast
    sd = read_weights(d)
    if layout == "deepseek":
        config = config_from_deepseek(raw_cfg, sd)
        sd, dropped = deepseek_to_transformers(sd)
    else:
        config = Config.from_hf(raw_cfg, name=raw_cfg.get("_name_or_path") or d.name)
        dropped = [k for k in sd if known_unused(k)]
        for k in dropped:
            sd.pop(k)
    if dropped:
        log.info("%s: ignoring %d known-unused weights: %s", d, len(dropped), describe_unused(dropped))
    processor = JanusProcessor(tokenizer, num_image_tokens=config.num_image_tokens,
                               image=_image_settings(d, layout, config.image_size),
                               max_length=max_length or PRETRAINED_CONTEXT, system_prompt=_system_prompt(d))
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {config.vocab_size}")
    config.image_token_id = processor.image_id
    model = build_model(config, sd, dtype=dtype, device=device, attn_implementation=attn_implementation,
                        source=f"{layout} checkpoint {d}")
    return model, processor


# ---------------------------------------------------------------------------------------------
# writing transformers' layout
# ---------------------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}\n\n{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}<|User|>: {{ m['content'] }}\n\n"
    "{%- else -%}<|Assistant|>: {{ m['content'] }}<｜end▁of▁sentence｜>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)


def save_transformers(model, processor, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` + `processor` as a transformers Janus checkpoint that
    `JanusForConditionalGeneration.from_pretrained(out_dir)` loads with nothing missing.
    Written into a temporary sibling directory and renamed, so a crash never leaves half a checkpoint;
    an existing export at `out_dir` is replaced, anything else there is refused."""
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (_is_export(out) or not any(out.iterdir()))):
        raise FileExistsError(f"{out} exists and is not a transformers Janus checkpoint (no config.json with "
                              "model_type 'janus') nor an empty folder: refusing to replace it. Name a new directory.")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_transformers(model, processor, tmp, dtype)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return out


def _is_export(d: Path) -> bool:
    try:
        return d.is_dir() and read_json(d / "config.json").get("model_type") == "janus"
    except CheckpointError:
        return False


@contextlib.contextmanager
def _cast(module: torch.nn.Module, dtype: torch.dtype | None):
    """`module`'s floating-point tensors in `dtype` inside the block, as they were after it: the caller's
    model must not change (`module.to(dtype)` would cast it for good, rotary `inv_freq` included).
    Costs one copy in `dtype`, not a copy of the whole model."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if dtype is None or all(t.dtype == dtype for t in tensors):
        yield
        return
    before = [t.data for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.to(dtype)
        yield
    finally:
        for t, data in zip(tensors, before):
            t.data = data


def _write_transformers(model, processor, tmp: Path, dtype: torch.dtype | None) -> None:
    from transformers import GenerationConfig

    janus = model.janus
    janus.config.image_token_id = processor.image_id
    # the tokenizer's ids, not LlamaConfig's placeholders (1 / 2 / None)
    text = janus.config.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = processor.bos_id, processor.eos_id, processor.pad_id
    janus.config.tie_word_embeddings = False
    janus.config.text_config.tie_word_embeddings = False
    janus.generation_config = GenerationConfig(
        bos_token_id=processor.bos_id, eos_token_id=processor.eos_id, pad_token_id=processor.pad_id,
        guidance_scale=5.0, temperature=1.0, do_sample=True,
        generation_kwargs={"boi_token_id": processor.boi_id},
    )
    with _cast(janus, dtype):
        janus.save_pretrained(str(tmp))
    as_plain_files(tmp.glob("*.safetensors"))
    tok = processor.tokenizer
    tok.save_pretrained(str(tmp))
    tc = tmp / "tokenizer_config.json"
    tcfg = json.loads(tc.read_text())
    tcfg["extra_special_tokens"] = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                                   "eoi_token": "<end_of_image>"}
    tc.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False))
    s = processor.image
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "JanusImageProcessor", "processor_class": "JanusProcessor",
        "do_resize": True, "size": {"height": s.image_size, "width": s.image_size}, "min_size": s.min_size,
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(s.mean), "image_std": list(s.std), "do_pad": True, "do_convert_rgb": True,
    }, indent=2))
    (tmp / "processor_config.json").write_text(json.dumps({
        "processor_class": "JanusProcessor", "num_image_tokens": processor.num_image_tokens,
        # transformers knows only default-or-none; our loader reads the text itself
        "use_default_system_prompt": processor.system_prompt == DEFAULT_SYSTEM_PROMPT,
        "system_prompt": processor.system_prompt,
    }, indent=2))
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)


# ---------------------------------------------------------------------------------------------
# Lightning checkpoints (self-describing: lit_janus metadata travels inside)
# ---------------------------------------------------------------------------------------------
def processor_for(tokenizer: str, config: Config, max_length: int = 4096):
    """A JanusProcessor for `config` from a tokenizer directory, or `shapes` for ShapesWorld's."""
    from lit_janus.processor import ImageSettings, JanusProcessor

    if tokenizer == "shapes":
        from lit_janus.shapes.tokenizer import shapes_tokenizer

        tok = shapes_tokenizer()
    else:
        tok = load_tokenizer(tokenizer)
    return JanusProcessor(tok, num_image_tokens=config.num_image_tokens,
                          image=ImageSettings(image_size=config.image_size), max_length=max_length)


def lightning_metadata(config: Config, processor) -> dict:
    import dataclasses
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        processor.tokenizer.save_pretrained(d)
        files = {p.name: p.read_text() for p in Path(d).iterdir() if p.is_file()}
    return {"config": config.asdict(), "tokenizer_files": files, "image": dataclasses.asdict(processor.image),
            "max_length": processor.max_length, "system_prompt": processor.system_prompt, "format": 1}


def _processor_from_metadata(meta: dict, max_length: int | None = None):
    import tempfile

    from lit_janus.processor import ImageSettings, JanusProcessor

    with tempfile.TemporaryDirectory() as d:
        for name, text in meta["tokenizer_files"].items():
            (Path(d) / name).write_text(text)
        tok = load_tokenizer(d)
    image = ImageSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["image"].items()})
    cfg = Config(**meta["config"])
    return cfg, JanusProcessor(tok, num_image_tokens=cfg.num_image_tokens, image=image,
                               max_length=max_length or meta.get("max_length", PRETRAINED_CONTEXT),
                               system_prompt=meta.get("system_prompt", DEFAULT_SYSTEM_PROMPT))


def _is_sharded_lightning(p: Path) -> bool:
    return p.is_dir() and (p / "meta.pt").is_file() and (p / ".metadata").is_file()


def _lightning_checkpoint(p: Path) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """(lit_janus metadata, state dict or None) of a Lightning checkpoint file or sharded directory."""
    f = p / "meta.pt" if _is_sharded_lightning(p) else p
    if f.is_file() and not zipfile.is_zipfile(f):  # torch.save's format is a zip archive
        hint = (f"; {f.suffix} is a weights file: pass its directory (with config.json)"
                if f.suffix in (".safetensors", ".bin") else "")
        raise CheckpointError(f"{f} is not a Lightning checkpoint (not a torch.save zip archive){hint}")
    try:
        ckpt = torch.load(f, map_location="cpu", weights_only=True, mmap=f is p)
    except Exception as e:
        raise CheckpointError(f"cannot read Lightning checkpoint {f}: {e}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{f} holds a {type(ckpt).__name__}, not a Lightning checkpoint (a dict)")
    return ckpt, None if f is not p else ckpt.get("state_dict")


def _model_state_from_lightning(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    prefix = "model.janus."
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(f"{source} holds no lit_janus model weights (no keys starting with {prefix!r})")
    return out


# What a DCP `.metadata` pickle may name. torch reads that file with plain `pickle.load`, which would
# run any code a tampered checkpoint carries; ours allows the metadata records and nothing else.
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by name (how torch pickles torch.strided)
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def _read_dcp_metadata(path: Path):
    """The `.metadata` of a DCP directory, unpickled with only `_DCP_METADATA_GLOBALS` (and torch dtypes)."""
    import importlib

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            obj = getattr(importlib.import_module(module), name, None) if module in _DCP_METADATA_GLOBALS else None
            if name in _DCP_METADATA_GLOBALS.get(module, ()) or (module == "torch" and isinstance(obj, torch.dtype)):
                return obj
            raise CheckpointError(f"{path} names {module}.{name}, which a checkpoint's metadata never needs: "
                                  "refusing to unpickle it (it could run code)")

    try:
        with open(path, "rb") as f:
            return Unpickler(f).load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read sharded checkpoint metadata {path}: {type(e).__name__}: {e}") from None


def _sharded_state_dict(p: Path) -> dict[str, torch.Tensor]:
    """A sharded (DCP) Lightning checkpoint's model weights as one state dict, read in memory. Only the
    `state_dict` entries are read: the optimizer state Lightning stores beside them is twice the
    weights (AdamW), so gathering everything would triple the memory (~90 GB for 7B)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    metadata = _read_dcp_metadata(p / ".metadata")

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    model_keys = [k for k in metadata.state_dict_metadata if k.startswith("state_dict.")]
    if not model_keys:
        raise CheckpointError(f"sharded checkpoint {p} has no model weights (no 'state_dict' entries)")
    # tensors only: non-tensor entries would be read with torch.load(weights_only=False)
    odd = [k for k in model_keys if not isinstance(metadata.state_dict_metadata[k], TensorStorageMetadata)]
    if odd:
        raise CheckpointError(f"sharded checkpoint {p}: model entries that are not tensors: {odd[:5]}")
    out: dict = {}
    try:
        _load_state_dict(out, storage_reader=Reader(p), planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
                         no_dist=True)
    except Exception as e:
        raise CheckpointError(f"cannot read sharded checkpoint {p}: {type(e).__name__}: {e}") from None
    return out["state_dict"]


def read_config_and_processor(path: str | Path, max_length: int | None = None):
    """(Config, JanusProcessor) of any checkpoint, without building the model. `max_length` (the
    processor's context) defaults to the one a Lightning checkpoint was trained with, and to
    Janus-Pro's 4096 for pretrained directories (which do not record one)."""
    p = Path(path)
    if not p.exists():
        hint = ("" if p.is_absolute() else f" (relative to the working directory {Path.cwd()})")
        if p.with_name(p.name + ".old").exists():
            hint += (f"; {p.name}.old is there: its run was killed while saving, between two renames - resume "
                     "that run with --ckpt_path pointing here (which restores it) or call "
                     "lit_janus.atomic.recover_replaced on this path")
        raise CheckpointError(f"checkpoint not found: {p}{hint}")
    if p.is_dir() and (p / "config.json").is_file():
        layout = detect_layout(p)
        raw = read_json(p / "config.json")
        if layout == "deepseek":
            # DeepSeek's config names presets; the shapes come from the weights (mmap: cheap)
            config = config_from_deepseek(raw, read_weights(p))
        else:
            config = Config.from_hf(raw)
        from lit_janus.processor import JanusProcessor

        processor = JanusProcessor(load_tokenizer(p), num_image_tokens=config.num_image_tokens,
                                   image=_image_settings(p, layout, config.image_size),
                                   max_length=max_length or PRETRAINED_CONTEXT, system_prompt=_system_prompt(p))
        config.image_token_id = processor.image_id
        return config, processor
    if p.is_file() or _is_sharded_lightning(p):
        meta, _ = _lightning_checkpoint(p)
        if "lit_janus" not in meta:
            raise CheckpointError(f"{p} is not a lit_janus Lightning checkpoint (no 'lit_janus' metadata)")
        return _processor_from_metadata(meta["lit_janus"], max_length)
    raise CheckpointError(
        f"{p} is neither a pretrained directory (with config.json), a Lightning .ckpt file, "
        "nor a sharded Lightning checkpoint directory (with meta.pt and .metadata)"
    )


def load_any(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
             attn_implementation: str = "sdpa", max_length: int | None = None):
    """(JanusPro, JanusProcessor) from a pretrained directory (either layout), a Lightning `.ckpt`
    file, or a sharded (FSDP2) Lightning checkpoint directory. `max_length`: as in
    `read_config_and_processor` (a Lightning checkpoint's own context unless given)."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        return load_pretrained(p, dtype=dtype, device=device, attn_implementation=attn_implementation,
                               max_length=max_length)
    config, processor = read_config_and_processor(p, max_length)
    if _is_sharded_lightning(p):
        sd = _sharded_state_dict(p)
    else:
        sd = _lightning_checkpoint(p)[1]
        if sd is None:
            raise CheckpointError(f"{p} has no state_dict")
    model = build_model(config, _model_state_from_lightning(sd, str(p)), dtype=dtype, device=device,
                        attn_implementation=attn_implementation, source=f"Lightning checkpoint {p}")
    return model, processor


# CheckpointError and detect_layout are re-exported: every loader here raises the one, and callers
# choose a loader by the other.
__all__ = [
    "CheckpointError",
    "PRETRAINED_CONTEXT",
    "build_model",
    "detect_layout",
    "init_nonpersistent_buffers",
    "lightning_metadata",
    "load_any",
    "load_pretrained",
    "load_tokenizer",
    "processor_for",
    "read_config_and_processor",
    "save_transformers",
]

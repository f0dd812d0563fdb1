"""Loading Janus-Pro checkpoints in DeepSeek's or transformers' layout, and writing transformers' layout.

DeepSeek (`deepseek-ai/Janus-Pro-1B`): config.json with model_type "multi_modality", timm-style
SigLIP with fused `qkv`, LlamaGen VQ names (`conv_blocks`, `res`, `mid.0`), `gen_head.*`,
`gen_embed`, weights in `pytorch_model.bin` (pickles: always `weights_only=True`) or shards.
transformers (`deepseek-community/Janus-Pro-1B`): model_type "janus", safetensors.

Every weight is accounted for. Only two kinds of keys are known to be unused and are dropped with
a message: SigLIP's attention-pooling head (`attn_pool.*`, never called by Janus) and the VQ's
`codebook_used` statistics buffer. Anything else missing or unexpected is an error naming it, and
the model is only assembled after every check passed, so nothing is ever half-loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import torch

from lit_janus.config import Config
from lit_janus.tokenizer import DEFAULT_SYSTEM_PROMPT

PRETRAINED_CONTEXT = 4096  # Janus-Pro's training sequence length; pretrained directories record none

log = logging.getLogger(__name__)

KNOWN_UNUSED = (re.compile(r"^vision_model\.vision_tower\.attn_pool\."), re.compile(r"quantize\.codebook_used$"))
# Heads cannot be read off weight shapes; DeepSeek's config only names a SigLIP preset.
SIGLIP_HEADS = {"siglip_large_patch16_384": 16, "siglip_so400m_patch14_384": 16, "siglip_so400m_patch14_224": 16}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file or key."""


# ---------------------------------------------------------------------------------------------
# reading weight files
# ---------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; CheckpointError naming the file if it is not one."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing weight file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # DeepSeek ships pickles: never unpickle arbitrary objects
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # torch.save's legacy (pre-1.6, non-zip) format cannot be memory-mapped: read it whole
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False: never here. Keep only what the file holds.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "pickled objects that are not tensors"
        raise CheckpointError(f"cannot read weight file {path}: it holds {what}, and weights are loaded without "
                              "running pickled code (weights_only=True): re-download it, or re-save its tensors "
                              "as safetensors where you trust it") from None
    except Exception as e:
        raise CheckpointError(f"cannot read weight file {path}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return sd


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: single file or index + shards, safetensors or .bin."""
    d = Path(directory)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            weight_map = read_json(d / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"cannot read {d / index}: no 'weight_map' object")
            missing = sorted({f for f in weight_map.values() if not (d / f).is_file()})
            if missing:
                raise CheckpointError(f"{d / index} lists shard(s) that are missing: {', '.join(missing)}")
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(d / shard))
            absent = sorted(set(weight_map) - set(sd))
            if absent:
                raise CheckpointError(f"keys listed in {index} but absent from the shards: {absent[:5]}")
            return sd
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (d / single).is_file():
            return _load_file(d / single)
    raise CheckpointError(
        f"no weights in {d}: expected model.safetensors, pytorch_model.bin, or an index with shards"
    )


def detect_layout(directory: str | Path) -> str:
    """'deepseek' or 'transformers', from config.json's model_type."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    cfg = d / "config.json"
    if not cfg.is_file():
        raise CheckpointError(
            f"{d} has no config.json: not a Janus-Pro checkpoint in DeepSeek's layout "
            "(model_type 'multi_modality') or transformers' layout (model_type 'janus')"
        )
    model_type = read_json(cfg).get("model_type")
    if model_type == "multi_modality":
        return "deepseek"
    if model_type == "janus":
        return "transformers"
    raise CheckpointError(
        f"{cfg} has model_type {model_type!r}; expected 'multi_modality' (DeepSeek) or 'janus' (transformers)"
    )


# ---------------------------------------------------------------------------------------------
# DeepSeek layout -> transformers layout
# ---------------------------------------------------------------------------------------------
_VQ_RENAMES = [
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.res\.(\d+)\."), r"\1.down.\2.block.\3."),
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\."), r"\1.down.\2.attn.\3."),
    (re.compile(r"^(encoder)\.conv_blocks\.(\d+)\.downsample\."), r"\1.down.\2.downsample."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.res\.(\d+)\."), r"\1.up.\2.block.\3."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.attn\.(\d+)\."), r"\1.up.\2.attn.\3."),
    (re.compile(r"^(decoder)\.conv_blocks\.(\d+)\.upsample\."), r"\1.up.\2.upsample."),
    (re.compile(r"^(encoder|decoder)\.mid\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.1\."), r"\1.mid.attn_1."),
    (re.compile(r"^(encoder|decoder)\.mid\.2\."), r"\1.mid.block_2."),
]
_VIT_RENAMES = [
    (re.compile(r"^blocks\.(\d+)\.norm1\."), r"encoder.layers.\1.layer_norm1."),
    (re.compile(r"^blocks\.(\d+)\.norm2\."), r"encoder.layers.\1.layer_norm2."),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\."), r"encoder.layers.\1.self_attn.projection_layer."),
    (re.compile(r"^blocks\.(\d+)\.mlp\."), r"encoder.layers.\1.mlp."),
    (re.compile(r"^patch_embed\.proj\."), "embeddings.patch_embedding."),
    (re.compile(r"^norm\."), "post_layernorm."),
]
_MLP_PROJECTOR = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


def describe_unused(keys: list[str]) -> str:
    """Name the known-unused weights by group, e.g. for the log line of a load."""
    groups = []
    if any("attn_pool" in k for k in keys):
        groups.append("vision_model.vision_tower.attn_pool.* (SigLIP's pooling head, never used by Janus)")
    if any(k.endswith("codebook_used") for k in keys):
        groups.append("quantize.codebook_used (the VQ's usage statistics buffer)")
    return "; ".join(groups)


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return None


def deepseek_to_transformers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and split fused qkv of) DeepSeek keys. Returns (new state dict, dropped known-unused keys).
    Raises CheckpointError for keys that are not part of Janus-Pro."""
    out: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, t in sd.items():
        if any(p.search(key) for p in KNOWN_UNUSED):
            dropped.append(key)
            continue
        new = None
        if key.startswith("language_model.model."):
            new = "model.language_model." + key[len("language_model.model."):]
        elif key == "language_model.lm_head.weight":
            new = "lm_head.weight"
        elif key == "gen_embed.weight":
            new = "model.generation_embeddings.weight"
        elif key.startswith("gen_head."):
            new = {"gen_head.output_mlp_projector.weight": "model.generation_head.proj_out.weight",
                   "gen_head.output_mlp_projector.bias": "model.generation_head.proj_out.bias",
                   "gen_head.vision_head.weight": "model.generation_head.vision_head.weight",
                   "gen_head.vision_head.bias": "model.generation_head.vision_head.bias"}.get(key)
        elif key.startswith(("aligner.", "gen_aligner.")):
            prefix, rest = key.split(".", 1)
            m = _MLP_PROJECTOR.match(rest)
            if m and int(m.group(1)) % 2 == 0:  # MlpProjector: Linear at even indices, GELU between
                i = int(m.group(1)) // 2
                target = "model.aligner" if prefix == "aligner" else "model.generation_aligner"
                new = f"{target}.fc1.{m.group(2)}" if i == 0 else f"{target}.hidden_layers.{i - 1}.{m.group(2)}"
        elif key.startswith("gen_vision_model."):
            rest = key[len("gen_vision_model."):]
            new = "model.vqmodel." + (_rename(rest, _VQ_RENAMES) or rest)
        elif key.startswith("vision_model.vision_tower."):
            rest = key[len("vision_model.vision_tower."):]
            base = "model.vision_model."
            if rest == "pos_embed":
                out[base + "embeddings.position_embedding.weight"] = t.reshape(t.shape[-2], t.shape[-1])
                continue
            qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", rest)
            if qkv:
                for name, part in zip("qkv", t.chunk(3, dim=0)):
                    out[f"{base}encoder.layers.{qkv.group(1)}.self_attn.{name}_proj.{qkv.group(2)}"] = part
                continue
            renamed = _rename(rest, _VIT_RENAMES)
            new = base + renamed if renamed else None
        if new is None:
            unknown.append(key)
        else:
            out[new] = t
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) in the DeepSeek checkpoint are not part of Janus-Pro: {unknown[:8]}"
        )
    return out, dropped


def config_from_deepseek(cfg: dict, sd: dict[str, torch.Tensor]) -> Config:
    """Architecture from DeepSeek's config.json, completed from weight shapes (its VQ-16 and
    SigLIP entries name presets rather than listing shapes)."""
    lang = cfg.get("language_config") or {}
    vparams = (cfg.get("vision_config") or {}).get("params") or {}

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"DeepSeek checkpoint lacks {key!r}")
        return sd[key]

    pos = need("vision_model.vision_tower.pos_embed")
    width, n_pos = pos.shape[-1], pos.shape[-2]
    patch = need("vision_model.vision_tower.patch_embed.proj.weight").shape[-1]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"vision_model\.vision_tower\.blocks\.(\d+)\.", k))}
    mlp = need("vision_model.vision_tower.blocks.0.mlp.fc1.weight").shape[0]
    heads = vparams.get("num_heads") or vparams.get("heads") or SIGLIP_HEADS.get(vparams.get("model_name"), width // 64)
    vq = "gen_vision_model."
    base = need(vq + "encoder.conv_in.weight").shape[0]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"gen_vision_model\.encoder\.conv_blocks\.(\d+)\.", k))})
    mult = [need(f"{vq}encoder.conv_blocks.{i}.res.0.conv1.weight").shape[0] // base for i in levels]
    n_res = len({int(m.group(1)) for k in sd if (m := re.match(r"gen_vision_model\.encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    codebook = need(vq + "quantize.embedding.weight")
    embed = need("language_model.model.embed_tokens.weight")
    n_layer = len({int(m.group(1)) for k in sd if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", k))})
    try:
        return Config(
            name=cfg.get("_name_or_path", "deepseek"),
            n_layer=lang.get("num_hidden_layers", n_layer),
            n_embd=embed.shape[1],
            n_head=lang["num_attention_heads"] if "num_attention_heads" in lang else embed.shape[1] // 128,
            n_query_groups=lang.get("num_key_value_heads") or lang.get("num_attention_heads", embed.shape[1] // 128),
            intermediate_size=need("language_model.model.layers.0.mlp.gate_proj.weight").shape[0],
            vocab_size=embed.shape[0],
            max_position_embeddings=lang.get("max_position_embeddings", 16384),
            rope_theta=lang.get("rope_theta", 10000.0),
            rms_norm_eps=lang.get("rms_norm_eps", 1e-6),
            vision_width=width,
            vision_layers=len(blocks),
            vision_heads=heads,
            vision_mlp_ratio=mlp / width,
            patch_size=patch,
            image_size=int(math.isqrt(n_pos)) * patch,
            codebook_size=codebook.shape[0],
            codebook_dim=codebook.shape[1],
            vq_base_channels=base,
            vq_channel_multiplier=mult,
            vq_num_res_blocks=n_res,
            vq_latent_channels=need(vq + "quant_conv.weight").shape[1],
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot derive the architecture from the DeepSeek checkpoint: {e}") from None


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
        dropped = [k for k in sd if any(p.search(k) for p in KNOWN_UNUSED)]
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


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(new: Path, dest: Path) -> None:
    """Give the finished `new` (a directory, or a file) the name `dest` (either, or nothing): the old `dest`
    moves aside before the new one takes its name, and goes only after, so `dest` is never half of one and
    half of the other."""
    old = dest.with_name(dest.name + ".old")
    remove_path(old)
    if dest.exists() or dest.is_symlink():
        os.replace(dest, old)
    os.replace(new, dest)
    try:
        remove_path(old)
    except OSError:
        pass


def recover_replaced(dest: Path) -> bool:
    """Finish a `replace_dir(partial, dest)` killed between its two renames: `dest` is missing, `dest.old`
    holds the previous checkpoint and the complete new one still has its temporary name. Returns whether
    anything was recovered."""
    old = dest.with_name(dest.name + ".old")
    if dest.exists() or dest.is_symlink() or not old.exists():
        return False
    partial = dest.with_name(f".{dest.name}.partial")
    # `replace_dir` only runs once the partial is whole, so with `dest` gone it is the newest checkpoint
    os.replace(partial if partial.exists() else old, dest)
    remove_path(old)
    return True


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
                     "lit_janus.checkpoint.recover_replaced on this path")
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

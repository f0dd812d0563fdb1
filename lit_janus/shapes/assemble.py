"""Assemble the Stage I starting checkpoint from the stage-0 outputs.

Janus-Pro starts Stage I from three pretrained parts: DeepSeek-LLM, SigLIP and LlamaGen's VQ
tokenizer. ShapesWorld trains the two visual parts itself (stage 0a: `vq_training`, stage 0b:
`siglip`) and has **no pretrained LLM**: its language model starts from random initialisation
(there is no ShapesWorld text corpus worth pretraining on that Stages II-III do not already
cover; the consequence, faithfully reproduced, is that Stage I trains adaptors and heads around a
random frozen LLM). The adaptors (`aligner`, `gen_embed`, `gen_aligner`, `gen_head`) start random
as in the paper.

    python -m lit_janus.shapes.assemble --vq VQ --vision VISION --out runs/shapes/init [--config shapes]

VQ / VISION: a stage-0 Lightning checkpoint (`.ckpt`) or an exported `.safetensors` (see
`export_stage0`). The output is a transformers-layout directory (`save_transformers`) with the
`shapes` tokenizer, loadable by `lit_janus.checkpoint.load_any` and by `init_from`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lit_janus.atomic import as_plain_files
from lit_janus.config import Config
from lit_janus.predict.writers import atomic_write


def load_part(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Weights of one stage-0 part: `prefix` is `vq.` or `vision.` (the attribute names in
    VQModule / SigLIPModule). `.safetensors` files hold them already stripped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (expected {prefix[:-1]}.safetensors or a stage-0 Lightning .ckpt)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    from lit_janus.shapes.vq_training import export_state_dict

    return export_state_dict(p, prefix)


def export_stage0(vq_ckpt: str | Path, vision_ckpt: str | Path, out_dir: str | Path,
                  config: Config | None = None) -> Path:
    """Write `vq.safetensors` and `vision.safetensors` (the `JanusPro.vq` / `JanusPro.vision`
    state dicts) and `stage0.json` (shapes) from the two stage-0 Lightning checkpoints: a few MB,
    what `checkpoints/shapes/stage0/` holds."""
    from safetensors.torch import save_file

    from lit_janus.shapes.vq_training import stage0_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(load_part(vq_ckpt, "vq."), str(out / "vq.safetensors"))
    save_file(load_part(vision_ckpt, "vision."), str(out / "vision.safetensors"))
    as_plain_files([out / "vq.safetensors", out / "vision.safetensors"])
    config = config or stage0_config(vq_ckpt)
    atomic_write(out / "stage0.json", lambda tmp: tmp.write_text(json.dumps({"config": config.asdict()}, indent=2)))
    return out


def assemble(vq: str | Path, vision: str | Path, out_dir: str | Path, config: str | Config = "shapes",
             seed: int = 0, **overrides) -> Path:
    """Random LLM + adaptors (seeded) + trained VQ and SigLIP -> a transformers-layout checkpoint.

    `overrides` change `config` fields (e.g. a smaller LLM for a demo); the VQ and vision shapes must
    match the stage-0 weights (a mismatch is an error naming the key)."""
    from lit_janus.checkpoint import build_model, processor_for, save_transformers

    cfg = Config.from_name(config, **overrides) if isinstance(config, str) else Config(**{**config.asdict(), **overrides})
    processor = processor_for("shapes", cfg)
    cfg.image_token_id = processor.image_id
    if len(processor.tokenizer) > cfg.vocab_size:
        raise ValueError(f"the shapes tokenizer has {len(processor.tokenizer)} tokens but vocab_size={cfg.vocab_size}")
    torch.manual_seed(seed)
    model = build_model(cfg)
    for name, module, path, prefix in (("VQ tokenizer", model.vq, vq, "vq."), ("vision encoder", model.vision, vision, "vision.")):
        sd = load_part(path, prefix)
        expected = module.state_dict()
        bad = sorted(set(expected) ^ set(sd)) + [k for k in expected if k in sd and expected[k].shape != sd[k].shape]
        if bad:
            raise ValueError(f"{name} weights in {path} do not fit this config ({cfg.name}): e.g. {bad[:4]}")
        module.load_state_dict(sd, strict=True)
    return save_transformers(model, processor, out_dir)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m lit_janus.shapes.assemble", description=__doc__.split("\n\n")[0])
    p.add_argument("--vq", required=True, help="stage-0a checkpoint (.ckpt) or vq.safetensors")
    p.add_argument("--vision", required=True, help="stage-0b checkpoint (.ckpt) or vision.safetensors")
    p.add_argument("--out", required=True, help="output directory (transformers layout)")
    p.add_argument("--config", default="shapes", help="model preset (default: shapes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random LLM and adaptors")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="Config overrides, e.g. n_layer=2 n_embd=128 (JSON values)")
    a = p.parse_args(argv)
    overrides = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    out = assemble(a.vq, a.vision, a.out, a.config, a.seed, **overrides)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()

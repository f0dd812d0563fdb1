"""`python -m lit_janus.convert SRC DST`: any Janus-Pro checkpoint -> transformers' layout.

SRC may be DeepSeek's layout (`deepseek-ai/Janus-Pro-1B`), transformers' layout, or a Lightning
training checkpoint of this project (a `.ckpt` file or an FSDP2 sharded checkpoint directory). DST then loads with
`transformers.JanusForConditionalGeneration.from_pretrained(DST)`.
"""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(src: str, dst: str, dtype: str | None = None) -> None:
    from lit_janus.checkpoint import load_any, save_transformers

    model, processor = load_any(src)
    save_transformers(model, processor, dst, dtype=DTYPES[dtype] if dtype else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_janus.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="pretrained directory (DeepSeek or transformers layout) or Lightning checkpoint")
    p.add_argument("dst", help="output directory (transformers layout); an earlier export there is replaced "
                   "atomically, anything else refused")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="cast the weights (default: float32, the dtype weights load in; DeepSeek's bfloat16 "
                        "release then takes twice its size: pass --dtype bfloat16 to keep it)")
    args = p.parse_args(argv)
    from lit_janus.checkpoint import CheckpointError

    try:
        convert(args.src, args.dst, args.dtype)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

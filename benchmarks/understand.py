"""Understanding speed: one 384 px image + a 40-token question -> a 64-token answer, lit_janus's
batched static-cache decoder against transformers' `JanusForConditionalGeneration.generate` (text
mode), same model, same process.

    python benchmarks/understand.py          # Janus-Pro-1B shapes (random init), bf16
    python benchmarks/understand.py --tiny   # tiny shapes (automatic without a GPU)

Both are greedy and forced to produce exactly `--new-tokens` tokens; both times include the SigLIP
encoder, the prefill and the decode (the image preprocessing is shared and excluded). Target on
one H100: <= 0.4 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, if not installed
from clock import sync, timed  # noqa: E402  benchmarks/clock.py (scripts run with benchmarks/ on sys.path)
from lit_janus.checkpoint import build_model  # noqa: E402
from lit_janus.config import Config  # noqa: E402
from lit_janus.decoder import StaticDecoder  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (default when no GPU is present)")
    ap.add_argument("--question-len", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    image_token = 5  # any id inside the vocabulary: random weights
    config = Config.from_name("tiny" if tiny else "janus-pro-1b", image_token_id=image_token)
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the device; build_model keeps RoPE frequencies float32
        model = build_model(config, dtype=dtype, device=device).eval().requires_grad_(False)
    hf = model.janus
    transformers.logging.set_verbosity_error()  # it warns about its own defaults on every call
    # everything through the config object (kwargs on top of it make transformers warn per call)
    hf.generation_config.update(pad_token_id=0, eos_token_id=None, max_length=None, max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=False)

    bos, boi, eoi = 1, 3, 4
    g = torch.Generator().manual_seed(0)
    question = torch.randint(10, config.vocab_size, (args.question_len,), generator=g).tolist()
    ids = [bos] + [boi] + [image_token] * config.num_image_tokens + [eoi] + question
    input_ids = torch.tensor([ids], device=device)
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=g).to(device, dtype)
    decoder = StaticDecoder(model, cuda_graphs=False if args.no_cuda_graphs else None,
                            compile=False if args.no_compile else None)

    def ours():
        embeds = model.input_embeddings(input_ids, image_mask=input_ids == image_token, pixel_values=pixels)
        return decoder.text([embeds[0]], [0], max_new_tokens=args.new_tokens, eos_id=None, temperature=0.0)[0]

    def transformers_generate():
        out = hf.generate(input_ids=input_ids, pixel_values=pixels, attention_mask=torch.ones_like(input_ids),
                          generation_mode="text")
        return out[0, input_ids.shape[1]:].tolist()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name} | torch {torch.__version__} | {config.name}: {config.n_layer} layers x {config.n_embd} | "
          f"prompt {len(ids)} tokens ({config.num_image_tokens} image) -> {args.new_tokens} tokens, "
          f"{str(dtype).split('.')[-1]}")
    with torch.no_grad():
        t_warm, a = timed(ours, device)
        _, b = timed(transformers_generate, device)
        print(f"fast decoder: cuda_graphs={decoder.cuda_graphs} compiled={decoder.compiled} "
              f"(first call incl. warm-up/capture {t_warm:.2f} s)")
        same = sum(x == y for x, y in zip(a, b))
        print(f"greedy tokens equal to transformers': {same}/{len(b)} (bf16 may diverge after a near-tie)")
        t_hf = [timed(transformers_generate, device)[0] for _ in range(args.repeats)]
        t_ours = [timed(ours, device)[0] for _ in range(args.repeats)]
    hf_s, ours_s = statistics.median(t_hf), statistics.median(t_ours)
    print(f"transformers generate: {hf_s:.3f} s")
    print(f"lit_janus:             {ours_s:.3f} s  runs: " + ", ".join(f"{t:.3f}" for t in t_ours)
          + "  (target on one H100: <= 0.4 s)")
    print(f"ratio transformers / ours seconds: {hf_s / ours_s:.2f}x")
    return {"transformers_s": hf_s, "ours_s": ours_s, "ratio": hf_s / ours_s, "equal_tokens": same}


if __name__ == "__main__":
    main()

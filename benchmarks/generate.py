"""Text-to-image speed: DeepSeek's sampling loop against lit_janus's fast sampler, in one process.

    python benchmarks/generate.py            # Janus-Pro-1B shapes (random init), 16 images, CFG 5, bf16
    python benchmarks/generate.py --tiny     # tiny shapes (automatic without a GPU): proves it runs

Both loops draw the same number of images from the same prompt with the same model; the VQ decode
(shared code, <1% of the time at 1B) is timed once and reported apart. Target on one H100:
16 images in <= 1.2 s and >= 8x the official-style loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, if not installed
from clock import profiled, sync, timed  # noqa: E402  benchmarks/clock.py (scripts run with benchmarks/ on sys.path)
from lit_janus.checkpoint import build_model  # noqa: E402
from lit_janus.config import Config  # noqa: E402
from lit_janus.decoder import StaticDecoder  # noqa: E402
from lit_janus.generate import decode_images, generate_official, generate_reference  # noqa: E402
from lit_janus.sampling import seed_key  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (default when no GPU is present)")
    ap.add_argument("--images", type=int, default=16, help="images of one prompt (parallel_size)")
    ap.add_argument("--prompt-len", type=int, default=24, help="prompt tokens, <bos> and <begin_of_image> included")
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                    help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of our sampler (median reported)")
    ap.add_argument("--official-repeats", type=int, default=1, help="timed runs of the official-style loop")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--bucket", type=int, default=64, help="attention-length bucket of the fast sampler")
    ap.add_argument("--profile", action="store_true", help="also print the busiest kernels of one call of ours")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="also compare the first N images with the eager reference loop (same seeds)")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    config = Config.from_name("tiny" if tiny else "janus-pro-1b")
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the device; build_model keeps RoPE frequencies float32
        model = build_model(config, dtype=dtype, device=device).eval().requires_grad_(False)
    # synthetic prompt: ids are arbitrary (random weights); what matters is the length
    bos, pad_id, boi = 1, 2, 3
    g = torch.Generator().manual_seed(0)
    body = torch.randint(10, config.vocab_size, (args.prompt_len - 2,), generator=g).tolist()
    cond = [bos] + body + [boi]
    uncond = [bos] + [pad_id] * len(body) + [boi]
    n, steps = args.images, config.num_image_tokens
    keys = [seed_key(0, j) for j in range(n)]

    decoder = StaticDecoder(model, cuda_graphs=None if not args.no_cuda_graphs else False,
                            compile=None if not args.no_compile else False, bucket=args.bucket)

    def ours():
        return decoder.images([cond] * n, [uncond] * n, keys, cfg_weight=args.cfg, pad_id=pad_id)

    def official():
        return generate_official(model, cond, pad_id, parallel_size=n, cfg_weight=args.cfg, decode=False)[0]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name} | torch {torch.__version__} | {config.name}: {config.n_layer} layers x {config.n_embd}, "
          f"{steps} tokens/image | {n} images, CFG {args.cfg}, {str(dtype).split('.')[-1]}, prompt {len(cond)} tokens")

    with torch.no_grad():
        # warm-up: ours builds its graphs (and compiles) here; the official loop gets a short run
        t_warm, _ = timed(ours, device)
        timed(lambda: generate_official(model, cond, pad_id, parallel_size=n, cfg_weight=args.cfg,
                                        n_tokens=min(8, steps), decode=False), device)
        print(f"fast sampler: cuda_graphs={decoder.cuda_graphs} compiled={decoder.compiled} "
              f"(first call incl. warm-up/capture {t_warm:.2f} s)")

        t_off = [timed(official, device)[0] for _ in range(args.official_repeats)]
        runs = [timed(ours, device) for _ in range(args.repeats)]
        t_ours = [t for t, _ in runs]
        codes = runs[-1][1]
        if args.profile:
            print(profiled(ours, device))
        decode_images(model, codes[:1])  # warm-up: cuDNN picks its convolution algorithms on a first call
        t_dec, _ = timed(lambda: decode_images(model, codes), device)

        if args.check:
            # the CUDA-graph path against the eager reference loop: identical tokens until a
            # low-precision near-tie flips one (then the rest diverges); a broken graph diverges at once
            ref = generate_reference(model, cond, uncond, keys[: args.check], cfg_weight=args.cfg)
            def agree(a, b) -> int:  # steps until the first differing token
                diff = (a != b).nonzero()
                return int(diff[0]) if len(diff) else steps

            for i in range(args.check):
                print(f"check image {i}: tokens equal to the reference loop up to step {agree(ref[i], codes[i])}/{steps}")
            if decoder.cuda_graphs:
                # the same kernels without graphs: the capture itself is checked apart from bf16
                # near-ties between different kernels (a graph bug diverges at once or at step P+1, 64, ...)
                plain = StaticDecoder(model, cuda_graphs=False, compile=decoder.compiled, bucket=args.bucket)
                again = plain.images([cond] * n, [uncond] * n, keys, cfg_weight=args.cfg, pad_id=pad_id)
                same = [agree(again[i], codes[i]) for i in range(n)]
                print(f"check CUDA graphs vs the same kernels without graphs: {sum(s == steps for s in same)}/{n} "
                      f"images identical; first differing step per image: {same}")

    off, fast = statistics.median(t_off), statistics.median(t_ours)
    print(f"official-style loop: {off:.3f} s ({off / steps * 1e3:.2f} ms/step)")
    print(f"lit_janus fast:      {fast:.3f} s ({fast / steps * 1e3:.2f} ms/step)  runs: "
          + ", ".join(f"{t:.3f}" for t in t_ours))
    print(f"VQ decode of {n} images: {t_dec:.3f} s (same code for both)")
    print(f"{n} images incl. decode: ours {fast + t_dec:.3f} s, official-style {off + t_dec:.3f} s "
          f"(target on one H100: ours <= 1.2 s)")
    print(f"ratio official-style / ours seconds: {off / fast:.2f}x sampling, {(off + t_dec) / (fast + t_dec):.2f}x "
          f"incl. VQ decode  (target >= 8x on one H100)")
    return {"official_s": off, "ours_s": fast, "decode_s": t_dec, "ratio": off / fast}


if __name__ == "__main__":
    main()

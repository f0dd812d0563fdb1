"""Per-GPU memory of Janus-Pro-7B Stage II with FSDP2 + activation checkpointing on 8 x 80 GB.

    python benchmarks/memory.py                 # the estimate for 7B (CPU, ~30 s)
    python benchmarks/memory.py --check         # + run the real FSDP2 code for a reduced 7B on this CPU and
                                                #   compare the tracked per-rank peak with the estimate (~3 min)
    python benchmarks/memory.py --tiny          # tiny shapes, estimate + check in seconds (tests)
    python benchmarks/memory.py --measure --rows 4    # ON ONE GPU: the full 7B rank-0 shard, measured

How the estimate is built (every input is read from the real modules, nothing is typed in):
- parameter counts per part and per FSDP unit from `JanusPro(janus-pro-7b)` built on the meta device,
  with the Stage II freeze policy of `lit_janus.module` and the unit plan of `lit_janus.sharding`
  (one unit per LLM decoder layer and per SigLIP layer, one for the frozen VQ, gathered in fp32 only while
  it encodes images before the forward; everything else in the root unit);
- bf16-mixed FSDP2 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`): fp32 sharded params
  (frozen ones too), fp32 sharded grads and two fp32 AdamW states for trainable params, all / world;
- during compute: the root unit unsharded in bf16 for the whole forward+backward (FSDP2 does not
  reshard the root after forward), two decoder layers unsharded (current + prefetched), the layer
  gradients in bf16 plus their fp32 reduce-scatter copy (one layer in flight);
- activations per micro-batch with every decoder layer checkpointed: each layer's bf16 input
  (slots x n_embd x 2 bytes x n_layer) plus one layer's recompute + backward, whose bytes per token are
  MEASURED here on CPU on a real `LlamaDecoderLayer` of the target shapes (bf16, sdpa, autocast)
  with `torch.distributed._tools.MemTracker`;
- the chunked cross-entropy (`lit_janus.losses`): one chunk of logits + the fp32 weight-gradient
  accumulator of lm_head, instead of slots x 102400 fp32 logits;
- gradient accumulation under Lightning's Trainer: FSDP2 reduce-scatters after every micro-batch
  (ModelParallelStrategy does not block gradient sync), so only the sharded fp32 grads accumulate;
- outside the PyTorch allocator (CUDA context, cuBLAS workspace, NCCL buffers) and allocator
  fragmentation are assumptions, labelled as such.

The check (`--check`, `--tiny`, `--measure`) runs the real thing: `lit_janus.sharding.shard_model` on
a JanusPro whose process group is a *fake* world of 8 ranks (torch's "fake" backend: collectives
do nothing, but every tensor has the size rank 0 would hold), activation checkpointing on, the
three losses, backward, AdamW; it measures the second micro-batch of a gradient accumulation (Adam
states and accumulated grads present). On a CPU the tracked peak comes from `FSDPMemTracker`; on a
GPU from `torch.cuda.max_memory_allocated` -- with the full 7B (`--measure`) that IS rank 0's memory
in the 8-GPU job (weights are random and the collectives fake, so losses are meaningless).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import build_processor, describe, enable_activation_checkpointing, stage2_batch  # noqa: E402

from lit_janus.batch import IGNORE  # noqa: E402
from lit_janus.config import Config  # noqa: E402

GiB = 2**30


# ---------------------------------------------------------------------------------------------
# what the model is made of (meta device, real module shapes)
# ---------------------------------------------------------------------------------------------
@dataclass
class Census:
    total: int
    trainable: int
    parts: dict[str, tuple[int, bool]]  # part -> (params, trainable)
    root: int  # params of the root FSDP unit
    vq: int  # params of the VQ unit (frozen; gathered only to tokenise images, outside forward/backward)
    root_trainable: int
    llm_layer: int  # params of one decoder layer
    n_llm_layers: int
    vision_layer: int
    n_vision_layers: int
    vision_trainable: bool


def census(cfg: Config, stage: int = 2) -> Census:
    from lit_janus.model import JanusPro
    from lit_janus.module import PARTS, STAGE_TRAINABLE

    with torch.device("meta"):
        m = JanusPro(cfg)
    trainable = STAGE_TRAINABLE[stage]
    prefixes = tuple(p for part in trainable for p in PARTS[part])
    parts = {part: [0, part in trainable] for part in PARTS}
    total = tr = 0
    for name, p in m.janus.named_parameters():
        part = next(k for k, pre in PARTS.items() if name.startswith(pre))
        parts[part][0] += p.numel()
        total += p.numel()
        tr += p.numel() if name.startswith(prefixes) else 0
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    llm_layers, vis_layers = list(m.llm.layers), list(m.vision.encoder.layers)
    llm_l = count(llm_layers[0])
    vis_l = count(vis_layers[0]) if vis_layers else 0
    vq = count(m.vq)
    root = total - llm_l * len(llm_layers) - vis_l * len(vis_layers) - vq
    vision_tr = "vision" in trainable
    root_tr = tr - llm_l * len(llm_layers) * ("llm" in trainable) - vis_l * len(vis_layers) * vision_tr
    return Census(total, tr, {k: (v[0], v[1]) for k, v in parts.items()}, root, vq, root_tr, llm_l,
                  len(llm_layers), vis_l, len(vis_layers), vision_tr)


def layer_bytes_per_token(cfg: Config, tokens: tuple[int, int] = (64, 192)) -> tuple[float, float]:
    """Bytes per token of one decoder layer, measured on CPU with MemTracker on a real
    `LlamaDecoderLayer` of `cfg`'s shapes (bf16 weights as FSDP2 gathers them, bf16 autocast, sdpa):
    (alive after its forward = what a recompute re-creates, peak during its backward). Slope between
    two lengths, so per-call constants drop out. Weight gradients are excluded here (FSDP2 terms)."""
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    hf = cfg.to_hf().text_config
    hf._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(hf, 0).to(torch.bfloat16)
    rot = LlamaRotaryEmbedding(hf)
    cpu = torch.device("cpu")
    out = {}
    for T in tokens:
        x = torch.randn(1, T, cfg.n_embd, dtype=torch.bfloat16, requires_grad=True)
        pos = torch.arange(T)[None]
        cos, sin = (t.to(torch.bfloat16) for t in rot(x, pos))
        mt = MemTracker()
        mt.track_external(layer, x, cos, sin)
        with mt:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x, position_embeddings=(cos, sin), position_ids=pos)
            y = y[0] if isinstance(y, tuple) else y
            after_fwd = mt.get_tracker_snapshot("current")[cpu]["Total"]
            y.backward(torch.ones_like(y), inputs=[x])  # activation gradients only
            peak = mt.get_tracker_snapshot("peak")[cpu]["Total"]
        out[T] = (after_fwd, peak)
        del x, y, mt
    a, b = tokens
    return (out[b][0] - out[a][0]) / (b - a), (out[b][1] - out[a][1]) / (b - a)


# ---------------------------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------------------------
@dataclass
class BatchStats:
    rows: int
    slots: int  # rows x pack_length: pads are computed too
    real: int
    text: int  # supervised text positions (lm_head)
    gen: int  # supervised image-code positions (gen_head)
    images: int  # understanding images (SigLIP)
    packed: bool


def batch_stats(batch) -> BatchStats:
    B, T = batch["input_ids"].shape
    starts = ((batch["position_ids"] == 0) & (batch["task_ids"] > 0)).sum(1)
    return BatchStats(B, B * T, int((batch["task_ids"] > 0).sum()), int((batch["text_labels"] != IGNORE).sum()),
                      int((batch["gen_labels"] != IGNORE).sum()),
                      int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0, bool((starts > 1).any()))


def estimate(cfg: Config, c: Census, per_token: tuple[float, float], s: BatchStats, world: int,
             attn: str = "sdpa", gpu: bool = True, chunk_elements: int | None = None,
             ac: bool = True, moment: str | None = None) -> list[tuple[str, float, str]]:
    """Components of the per-rank peak in bytes, as (name, bytes, how). Candidate moments: the start of
    backward with all checkpoints alive and either the last decoder layer recomputed ("layer") or the
    cross-entropy backward ("ce"), and the root unit's reduce-scatter at the end of backward ("end");
    the largest is reported unless `moment` names one. `gpu=False` leaves out
    what only exists with CUDA streams (the in-flight reduce-scatter) and the runtime assumptions (for
    the CPU check)."""
    from lit_janus.losses import default_chunk_size

    D, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    N = s.slots
    fwd_tok, bwd_tok = per_token
    chunk = default_chunk_size(V, chunk_elements)
    n_chunks = max(1, -(-s.text // chunk))
    Lw = c.llm_layer
    static = [
        ("sharded fp32 params (all, frozen too)", 4 * c.total / world, f"4 B x {c.total / 1e9:.3f}G / {world}"),
        ("sharded fp32 grads (trainable)", 4 * c.trainable / world, f"4 B x {c.trainable / 1e9:.3f}G / {world}"),
        ("AdamW exp_avg + exp_avg_sq (fp32)", 8 * c.trainable / world, f"8 B x {c.trainable / 1e9:.3f}G / {world}"),
    ]
    start = [
        ("root unit unsharded (bf16), whole forward+backward", 2 * c.root, f"2 B x {c.root / 1e9:.3f}G: embed, "
         "lm_head, heads, aligners, SigLIP embeddings"),
        ("decoder layers unsharded (bf16)", 2 * Lw * 2, f"2 B x {Lw / 1e6:.0f}M x 2 (current + prefetched)"),
        ("decoder layer grads: bf16 + fp32 reduce-scatter input", (2 + (4 if gpu else 0)) * Lw,
         f"{2 + (4 if gpu else 0)} B x {Lw / 1e6:.0f}M" + (" (one reduce-scatter in flight)" if gpu else "")),
        ("lm_head grad (bf16, until the root reduce-scatter)", 2 * V * D, f"2 B x {V} x {D}"),
    ]
    if ac:
        start += [
            ("activation checkpoints (bf16 layer inputs)", 2 * D * N * L, f"2 B x {D} x {N} slots x {L} layers"),
            ("one decoder layer: recompute + backward", bwd_tok * N, f"{bwd_tok / D:.1f} B x n_embd per slot (measured)"),
        ]
        layer = bwd_tok * N
    else:
        start += [
            ("saved activations of every decoder layer (no AC)", fwd_tok * N * L,
             f"{fwd_tok / D:.1f} B x n_embd per slot x {L} layers (measured)"),
            ("one decoder layer's backward on top", max(0.0, bwd_tok - fwd_tok) * N, "measured"),
        ]
        layer = max(0.0, bwd_tok - fwd_tok) * N
    start.append(("final norm, h at supervised positions, grad of h", N * D * (4 + 2 + 4) + (s.text + s.gen) * D * 2 * 2,
                  "fp32+bf16 norm, fp32 grad of h, bf16 gathered rows"))
    if s.packed and attn == "sdpa":
        start.append(("sdpa mask of packed documents [B,1,T,T] bool", s.rows * (N // s.rows) ** 2, "flash/flex: none"))
    # the cross-entropy backward comes before the layer recompute: one or the other
    ce = (4 * V * D if n_chunks > 1 else 0) + min(chunk, max(s.text, 1)) * V * (2 + 4 + 2)
    ce_moment = start + [("cross-entropy backward instead of a layer (net)", ce - layer,
                          f"{n_chunks} chunk(s) of <= {chunk} tokens x V x 8 B"
                          + (" + fp32 lm_head grad accumulator" if n_chunks > 1 else ""))]
    end = [("root grads at its reduce-scatter: bf16 + fp32 copy", 6 * c.root_trainable,
            f"6 B x {c.root_trainable / 1e9:.3f}G (root params already resharded)")]
    moments = {"layer": start, "ce": ce_moment, "end": end}
    pick = moments[moment] if moment else max(moments.values(), key=lambda m: sum(b for _, b, _ in m))
    comps = static + pick
    if gpu:
        tensors = sum(b for _, b, _ in comps)
        comps.append(("allocator fragmentation (assumed 10%)", 0.10 * tensors, "assumption"))
        comps.append(("CUDA context + cuBLAS + NCCL (assumed)", 3 * GiB, "assumption, outside torch's allocator"))
    return comps


def print_estimate(comps, title: str) -> float:
    total = sum(b for _, b, _ in comps)
    unit, div = ("GiB", GiB) if total > GiB else ("MiB", 2**20)
    print(f"\n{title}")
    for name, b, how in comps:
        print(f"  {name:52s} {b / div:8.2f} {unit}   {how}")
    print(f"  {'TOTAL':52s} {total / div:8.2f} {unit}")
    return total


# ---------------------------------------------------------------------------------------------
# the check: real FSDP2 code, fake 8-rank world, one device
# ---------------------------------------------------------------------------------------------
def measure(cfg: Config, batch, world: int, device: torch.device, stage: int = 2) -> dict[str, float]:
    """Rank 0 of a fake `world`-rank FSDP2 job on `device`: peak bytes of the second micro-batch of a
    gradient accumulation (forward, three losses, backward), plus the AdamW step after it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from lit_janus.checkpoint import init_nonpersistent_buffers
    from lit_janus.model import JanusPro
    from lit_janus.module import PARTS, STAGE_TRAINABLE
    from lit_janus.sharding import shard_model

    owns_pg = not dist.is_initialized()
    if owns_pg:
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        mesh = init_device_mesh(device.type, (world,))
        with torch.device("meta"):
            model = JanusPro(cfg, "sdpa")
        prefixes = tuple(p for part in STAGE_TRAINABLE[stage] for p in PARTS[part])
        for name, p in model.janus.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        enable_activation_checkpointing(model.janus)
        shard_model(model, mesh, "bf16-mixed")
        model.to_empty(device=device)
        g = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():  # local shards only; no collectives
                local = p.to_local() if hasattr(p, "to_local") else p
                local.normal_(0.0, 0.02, generator=g)
        init_nonpersistent_buffers(model, device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
        b = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

        def micro_batch():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(b)
                loss = out["und_loss"] + out["text_loss"] + out["gen_loss"]
            loss.backward()

        micro_batch()  # step 1: creates sharded grads, then AdamW states
        opt.step()
        result = {}
        if device.type == "cuda":
            torch.cuda.synchronize()
            gc.collect()
            torch.cuda.reset_peak_memory_stats()
            micro_batch()  # accumulate into the existing grads
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            torch.cuda.synchronize()
            result["peak_allocated"] = torch.cuda.max_memory_allocated()
            result["peak_reserved"] = torch.cuda.max_memory_reserved()
        else:
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

            fmt = FSDPMemTracker(model, opt)
            fmt.track_inputs((b,))
            with fmt:
                # the tracker expects every FSDP unit to have run forward before backward ends; the frozen VQ
                # unit (codes pre-tokenised here) never would: run it once, then forget the peak it made
                # (private fields; torch is pinned for CI), so the peak is the training step's
                with torch.no_grad():
                    model.vq(torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=device))
                fmt._peak_mem.clear()
                fmt._peak_mem_snap.clear()
                micro_batch()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            from torch.distributed._tools.fsdp2_mem_tracker import _FSDPModState

            peak = fmt.get_tracker_snapshot("peak")[device]
            result = {getattr(k, "value", str(k)): v for k, v in peak.items()}
            result["peak_allocated"] = peak["Total"]
            last = fmt.memory_tracking[model.llm.layers[-1]].snapshots[_FSDPModState.PEAK_BW]
            result["last_layer_backward"] = max(snap[device]["Total"] for snap in last)
        del model, opt
        gc.collect()
        return result
    finally:
        if owns_pg:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: estimate + CPU check in seconds")
    ap.add_argument("--check", action="store_true", help="also run the fake-8-rank FSDP2 check on this CPU "
                    "(7B shapes with --check-layers decoder layers and a --check-rows x --check-length batch)")
    ap.add_argument("--measure", action="store_true", help="GPU: run the full model's rank-0 shard and compare")
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--gpu-gib", type=float, default=79.0,
                    help="usable GiB per GPU (an H100 80GB reports 79.1 GiB to torch)")
    ap.add_argument("--global-batch", type=int, default=512, help="sequences per optimizer step (paper)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 4096; tiny 256)")
    ap.add_argument("--micro", default=None, help="micro-batch sizes (sequences per GPU) to tabulate")
    ap.add_argument("--rows", type=int, default=2, help="--measure: sequences per micro-batch")
    ap.add_argument("--layers", type=int, default=None, help="--measure: decoder layers (default all)")
    ap.add_argument("--check-layers", type=int, default=2)
    ap.add_argument("--check-rows", type=int, default=2)
    ap.add_argument("--check-length", type=int, default=1024)
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args(argv)
    if args.seq is None:
        args.seq = 256 if args.tiny else 4096
    if args.micro is None:
        args.micro = "1,2,4" if args.tiny else "1,2,4,8"
    args.micro = [int(x) for x in str(args.micro).split(",")]
    if args.tiny:
        args.check = True
        args.check_layers, args.check_rows, args.check_length = 2, 2, 512
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = "tiny" if args.tiny else "janus-pro-7b"
    t0 = time.perf_counter()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tokdir:
        _, proc = build_processor(args.tiny, args.seq, tokdir)  # the tokenizer (image token id) and processor
        from lit_janus.tokenizer import IMAGE

        cfg = Config.from_name(name, image_token_id=proc.tokenizer.convert_tokens_to_ids(IMAGE))
        if cfg.num_image_tokens != proc.num_image_tokens:
            raise RuntimeError("processor and config disagree on image tokens")
        c = census(cfg, stage=2)
        print(f"{name} Stage II, FSDP2 over {args.world} ranks, bf16-mixed, every decoder layer checkpointed")
        print(f"params (meta-device census): total {c.total / 1e9:.3f}G, trainable {c.trainable / 1e9:.3f}G; "
              + ", ".join(f"{k} {v / 1e6:.0f}M{'' if t else ' frozen'}" for k, (v, t) in c.parts.items()))
        print(f"FSDP units: root {c.root / 1e6:.0f}M ({c.root_trainable / 1e6:.0f}M trainable), "
              f"{c.n_llm_layers} x decoder layer {c.llm_layer / 1e6:.1f}M, {c.n_vision_layers} x SigLIP layer "
              f"{c.vision_layer / 1e6:.1f}M ({'trainable' if c.vision_trainable else 'frozen'})")
        per_tok = layer_bytes_per_token(cfg)
        print(f"one decoder layer, measured on CPU (MemTracker, bf16, sdpa): {per_tok[0] / cfg.n_embd:.1f} x n_embd "
              f"bytes per token alive after forward, {per_tok[1] / cfg.n_embd:.1f} x n_embd peak in backward")
        report["census"], report["per_token"] = c, per_tok

        rows_table = []
        for m in args.micro:
            batch = stage2_batch(cfg, proc, m, args.seq)
            s = batch_stats(batch)
            comps = estimate(cfg, c, per_tok, s, args.world, args.attn)
            total = sum(b for _, b, _ in comps)
            no_ac = sum(b for _, b, _ in estimate(cfg, c, per_tok, s, args.world, args.attn, ac=False))
            accum = args.global_batch / (args.world * m)
            rows_table.append((m, s, total, accum, comps, no_ac))
        m0, s0, total0, _, comps0, _ = next((r for r in rows_table if r[0] == 4), rows_table[-1])
        print_estimate(comps0, f"estimated peak per GPU, micro-batch {m0} x {args.seq} tokens "
                       f"({s0.real} real, {s0.text} supervised text, {s0.gen} codes, {s0.images} images):")
        print(f"\n{'micro-batch (seq/GPU)':>22s} {'accumulation steps':>19s} {'est. peak GiB':>14s}  "
              f"fits {args.gpu_gib:.0f} GiB?   without activation checkpointing")
        for m, s, total, accum, _, no_ac in rows_table:
            fits = lambda x: "yes" if x <= args.gpu_gib * GiB else "NO"  # noqa: E731
            print(f"{m:22d} {accum:19.1f} {total / GiB:14.2f}  {fits(total):13s}   {no_ac / GiB:7.2f} GiB ({fits(no_ac)})")
        print(f"(global batch {args.global_batch} sequences = {args.world} GPUs x micro-batch x accumulation steps)")
        report["table"] = [(m, total, no_ac) for m, _, total, _, _, no_ac in rows_table]

        if args.check:
            ccfg = replace(cfg, n_layer=args.check_layers, vision_layers=min(cfg.vision_layers, 1))
            batch = stage2_batch(ccfg, proc, args.check_rows, args.check_length)
            print(f"\ncheck on this CPU: {name} shapes with {ccfg.n_layer} decoder layers and {ccfg.vision_layers} "
                  f"SigLIP layer, batch " + describe(batch))
            batch.pop("_samples")
            s = batch_stats(batch)
            cc = census(ccfg, stage=2)
            est = estimate(ccfg, cc, per_tok, s, args.world, args.attn, gpu=False)
            est_total = sum(b for _, b, _ in est)
            est_layer = sum(b for _, b, _ in estimate(ccfg, cc, per_tok, s, args.world, args.attn, gpu=False,
                                                      moment="layer"))
            t1 = time.perf_counter()
            got = measure(ccfg, batch, args.world, torch.device("cpu"))
            print(f"  FSDPMemTracker peak of rank 0 (fake {args.world}-rank world, real lit_janus.sharding plan): "
                  f"{got['peak_allocated'] / 2**20:.1f} MiB  [{time.perf_counter() - t1:.0f} s]")
            print("   by category (MiB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in got.items()
                                                       if k not in ("Total", "peak_allocated", "last_layer_backward") and v))
            print_estimate(est, "  estimate for the same config (no CUDA-only terms):")
            print(f"  backward of the last decoder layer (all checkpoints alive): tracked "
                  f"{got['last_layer_backward'] / 2**20:.1f} MiB, estimated (moment 'layer') {est_layer / 2**20:.1f} MiB")
            print(f"ratio measured / estimated (CPU check): {got['peak_allocated'] / est_total:.2f} at the peak, "
                  f"{got['last_layer_backward'] / est_layer:.2f} in the last layer's backward")
            report["check"] = (got["peak_allocated"], est_total, got["last_layer_backward"], est_layer)

        if args.measure:
            if not torch.cuda.is_available():
                raise SystemExit("--measure needs a GPU")
            mcfg = replace(cfg, n_layer=args.layers or cfg.n_layer)
            batch = stage2_batch(mcfg, proc, args.rows, args.seq)
            print(f"\nmeasure on {torch.cuda.get_device_name()}: rank 0 of a fake {args.world}-rank FSDP2 job, "
                  f"{mcfg.n_layer} decoder layers, batch " + describe(batch))
            batch.pop("_samples")
            s = batch_stats(batch)
            est = estimate(mcfg, census(mcfg, 2), per_tok, s, args.world, args.attn)
            tensors = sum(b for n, b, _ in est if "assumed" not in n)
            got = measure(mcfg, batch, args.world, torch.device("cuda"))
            print(f"  torch.cuda.max_memory_allocated {got['peak_allocated'] / GiB:.2f} GiB, "
                  f"max_memory_reserved {got['peak_reserved'] / GiB:.2f} GiB")
            print(f"  estimate (tensors only, no fragmentation/runtime assumptions) {tensors / GiB:.2f} GiB")
            print(f"ratio measured / estimated (GPU): {got['peak_allocated'] / tensors:.2f}")
            report["measure"] = (got["peak_allocated"], tensors)
    print(f"\n[{time.perf_counter() - t0:.0f} s on {'GPU' if args.measure else 'CPU'}; torch {torch.__version__}]")
    return report


if __name__ == "__main__":
    main()

"""Training-step throughput: our LightningModule vs a plain eager transformers step, same tokens, same process.

    python benchmarks/train_step.py                  # GPU: Janus-Pro-1B shapes, random init, bf16-mixed
    python benchmarks/train_step.py --tiny           # CPU check that everything runs (auto without a GPU)
    python benchmarks/train_step.py --attn flex_attention --ac-layers 6 --no-compile   # the levers
    python benchmarks/train_step.py --ce unchunked --no-plain --stages 2              # A/B the chunked CE
    bash benchmarks/gpu_checks.sh training           # the device checks of issue 7 in one go

The batch is a Janus-Pro Stage II mix, understanding : text : text-to-image = 2 : 3 : 5 samples,
built with the real processor (chat format, image placeholders, 576 codes per image) from a
byte-level BPE tokenizer (`build_tokenizer`; the config pads the vocabulary to 102,400), random
images and random VQ codes (pre-tokenised: the frozen VQ encoder is not timed), packed first-fit
into rows of `--pack-length` with `collate(..., pack_length=...)`.

Timed variants (median step time over `--steps` after `--warmup` steps, `cuda.synchronize` between):
- `plain`: transformers' `LlamaForCausalLM` with the same LLM shapes, `labels=input_ids` on the same
  rows (full-vocabulary logits at every position, plain causal rows), bf16 autocast, eager, sdpa,
  `torch.optim.AdamW` (default foreach), grad-norm clip 1.0;
- `ours stage N`: `JanusModule` through a Lightning `Trainer` (precision bf16-mixed, clip 1.0):
  SigLIP on the understanding images, the three losses with the chunked cross-entropy, backward,
  AdamW (fused on GPU), logging; per step the whole loop iteration (data transfer included).
  Levers: `--compile` (each decoder layer, default on a GPU), `--attn` (one row per backend listed;
  default sdpa, whose dense packed-document mask forces the memory-efficient kernel over every block,
  and varlen_attention, flash over the documents alone), `--ac-layers N` (checkpoint only the first N
  decoder layers), `--ce`, `--chunk-elements`. Each row's note gives its first-step loss: same weights
  and batch, so backends that agree on it compute the same thing.
Stage I freezes the LLM (no LLM weight gradients), Stage II trains it.

MFU = model FLOPs per step / step time / peak. Model FLOPs are `lit_janus.flops.step_flops`:
6 x (matmul parameters x the tokens each applies to) + 6 x n_layer x n_embd x sum over documents of
L_doc^2 (attention), whatever is frozen (so Stage I's MFU is "model", not hardware, utilisation).
The plain step is charged the same way for its own work (lm_head on every position, full-row
causal attention). Peak: 989 TFLOP/s dense bf16 on H100/H200 (`lit_janus.flops.PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, if not installed
from clock import kernel_table, profiler, sync  # noqa: E402  benchmarks/clock.py
from lit_janus.batch import IGNORE, Sample, collate  # noqa: E402
from lit_janus.config import Config  # noqa: E402
from lit_janus.flops import part_params, peak_flops, step_flops  # noqa: E402

UNIT = {"und": 2, "text": 3, "t2i": 5}  # Stage II sample ratio (Janus-Pro)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _words(rng: random.Random, n: int) -> str:
    syl = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "ri", "go", "an", "el", "or", "um"]
    return " ".join("".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(n))


def build_processor(tiny: bool, pack_length: int, tokenizer_dir: str):
    """A BPE tokenizer with Janus-Pro's special tokens (saved to `tokenizer_dir` for JanusModule),
    the config with the image token id from it, and a processor."""
    from lit_janus.processor import ImageSettings, JanusProcessor
    from lit_janus.tokenizer import IMAGE, build_tokenizer

    rng = random.Random(0)
    corpus = [_words(rng, rng.randint(5, 40)) for _ in range(300 if tiny else 3000)]
    tok = build_tokenizer(corpus, vocab_size=400 if tiny else 8000)
    tok.save_pretrained(tokenizer_dir)
    name = "tiny" if tiny else "janus-pro-1b"
    cfg = Config.from_name(name, image_token_id=tok.convert_tokens_to_ids(IMAGE))
    proc = JanusProcessor(tok, num_image_tokens=cfg.num_image_tokens, image=ImageSettings(image_size=cfg.image_size),
                          max_length=pack_length)
    return cfg, proc


def _text_sample(proc, rng: random.Random, length: int) -> Sample:
    """A pure-text document of exactly `length` tokens (<bos> ... <eos>), laid out like text_sample."""
    ids: list[int] = []
    while len(ids) < length - 2:
        ids += proc.encode(_words(rng, 200) + ".")
    t = torch.tensor([proc.bos_id] + ids[: length - 2] + [proc.eos_id])
    labels = torch.full_like(t, IGNORE)
    labels[:-1] = t[1:]
    zeros = torch.zeros_like(t, dtype=torch.bool)
    return Sample(input_ids=t, text_labels=labels, gen_labels=torch.full_like(t, IGNORE), gen_mask=zeros,
                  image_mask=zeros.clone(), task="text")


def stage2_batch(cfg: Config, proc, rows: int, pack_length: int, seed: int = 0):
    """Whole 2:3:5 units of understanding / text / t2i samples packed into exactly `rows` rows.
    Understanding and t2i lengths are realistic (system prompt + 576 image tokens + question +
    answer; prompt + 576 codes); the text documents take up the remaining room. Below one unit's
    size (small memory checks) it takes one understanding and one t2i sample plus text instead."""
    from PIL import Image

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    tiny = cfg.num_image_tokens < 100
    ans, prm = ((2, 8), (2, 6)) if tiny else ((10, 120), (8, 50))  # words per answer / t2i prompt

    def unit_fixed():
        out = []
        for _ in range(UNIT["und"]):
            img = Image.fromarray((torch.rand(rng.randint(200, 500), rng.randint(200, 500), 3, generator=g) * 255)
                                  .to(torch.uint8).numpy()) if not tiny else \
                Image.fromarray((torch.rand(20, 28, 3, generator=g) * 255).to(torch.uint8).numpy())
            out.append(proc.understanding_sample(img, _words(rng, rng.randint(3, 12)) + "?",
                                                 _words(rng, rng.randint(*ans))))
        for _ in range(UNIT["t2i"]):
            codes = torch.randint(0, cfg.codebook_size, (cfg.num_image_tokens,), generator=g)
            out.append(proc.t2i_sample(_words(rng, rng.randint(*prm)), codes))
        return out

    capacity, min_text = rows * pack_length, 16
    fixed: list[Sample] = []
    while True:  # as many whole units as leave room for their text documents
        more = unit_fixed()
        units = (len(fixed) + len(more)) // (UNIT["und"] + UNIT["t2i"])
        if sum(map(len, fixed + more)) + min_text * UNIT["text"] * units > 0.9 * capacity:
            break
        fixed += more
    n_text = len(fixed) // (UNIT["und"] + UNIT["t2i"]) * UNIT["text"]
    if not fixed:  # smaller than one unit (memory checks on a CPU): one of each kind that fits
        und, t2i = more[0], more[UNIT["und"]]
        fixed = [s for s in (und, t2i) if len(s) + min_text <= 0.9 * pack_length][: max(1, rows)]
        n_text = rows
    for fill in [x / 100 for x in range(99, 60, -1)]:
        budget = int(capacity * fill) - sum(map(len, fixed))
        shares = [rng.random() + 0.5 for _ in range(n_text)]
        lengths = [min(pack_length, max(min_text, int(budget * s / sum(shares)))) for s in shares]
        texts = [_text_sample(proc, random.Random(seed + i), n) for i, n in enumerate(lengths)]
        samples = sorted(fixed + texts, key=len, reverse=True)  # first-fit decreasing
        batch = collate(samples, proc.pad_id, pack_length=pack_length)
        if batch["input_ids"].shape[0] <= rows:
            break
    else:
        raise ValueError(f"could not pack the samples into {rows} rows of {pack_length}")
    batch["_samples"] = {t: sum(s.task == t for s in samples) for t in UNIT}  # not a tensor: removed below
    return batch


def describe(batch) -> str:
    real = int((batch["task_ids"] > 0).sum())
    B, T = batch["input_ids"].shape
    counts = batch["_samples"]
    docs = int(((batch["position_ids"] == 0) & (batch["task_ids"] > 0)).sum())
    return (f"{B} rows x {T} = {B * T} slots, {real} real tokens ({100 * real / (B * T):.1f}% filled), {docs} documents, "
            f"samples und:text:t2i = {counts['und']}:{counts['text']}:{counts['t2i']}; supervised: "
            f"{int((batch['text_labels'] != IGNORE).sum())} text, {int((batch['gen_labels'] != IGNORE).sum())} image codes; "
            f"{batch['pixel_values'].shape[0] if 'pixel_values' in batch else 0} understanding images")


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    tokens: int
    flops: float
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    note: str = ""
    failed: str = ""  # e.g. "out of memory"

    @property
    def step_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s


def _reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _free(device):
    torch._dynamo.reset()  # compiled-layer caches must not keep a finished variant's model alive
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_plain(cfg: Config, batch, device, warmup: int, steps: int) -> Result:
    """transformers' LlamaForCausalLM on the same rows: eager, bf16 autocast, labels=input_ids."""
    from transformers import LlamaForCausalLM

    text_cfg = cfg.to_hf().text_config
    text_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(text_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    real = batch["task_ids"] > 0
    ids = batch["input_ids"].to(device)
    labels = batch["input_ids"].masked_fill(~real, IGNORE).to(device)
    # its own model FLOPs: the LLM on every real token, lm_head at every labelled position, full rows
    B, T = ids.shape
    flops = step_flops(cfg, {
        "task_ids": real.long(), "text_labels": labels.cpu(), "gen_labels": torch.full_like(labels.cpu(), IGNORE),
        "gen_mask": torch.zeros_like(real), "position_ids": torch.arange(T).expand(B, T),
    })
    res = Result("plain HF Llama (eager)", int(real.sum()), flops)
    for i in range(warmup + steps):
        if i == warmup:
            _reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            res.times.append(time.perf_counter() - t0)
    res.peak_bytes = _peak(device)
    del model, opt, loss
    _free(device)
    return res


def run_ours(cfg: Config, batch, device, tokenizer_dir: str, stage: int, attn: str, args,
             profile: bool = False) -> Result:
    """JanusModule under a Lightning Trainer; per-step time = the whole loop iteration. `profile`: one
    extra step after the timed ones, under the profiler."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    import lit_janus.losses
    from lit_janus.module import JanusModule

    import lit_janus.model

    if args.chunk_elements:
        lit_janus.losses.DEFAULT_CHUNK_ELEMENTS = args.chunk_elements
    # the loss function JanusPro.forward calls: chunked (ours) or the full-logits A/B baseline
    lit_janus.model.linear_cross_entropy = (lit_janus.losses.linear_cross_entropy if args.ce == "chunked"
                                            else lit_janus.losses.unchunked_linear_cross_entropy)
    fused = device.type == "cuda" and not args.no_fused_adamw

    def optimizer(params):
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=fused or None)

    class Bench(JanusModule):
        def configure_model(self):
            first = self.model is None
            super().configure_model()
            if first and args.ac_layers:  # checkpoint only the first `ac_layers` decoder layers
                enable_activation_checkpointing(self.model.janus)
                for i, layer in enumerate(self.model.llm.layers):
                    layer.gradient_checkpointing = i < args.ac_layers
                for layer in self.model.vision.encoder.layers:  # frozen in stages I/II: nothing to save
                    layer.gradient_checkpointing = False

    module = Bench(config=cfg, tokenizer=tokenizer_dir, stage=stage, optimizer=optimizer, max_length=args.pack_length,
                   compile=args.compile, attn_implementation=attn)
    n = args.warmup + args.steps + (1 if profile else 0)

    class Repeat(Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return batch

    class Timer(L.Callback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            if batch_idx == args.warmup:
                _reset_peak(device)
            if profile and batch_idx == args.warmup + args.steps:  # the extra step after the timed ones
                self.prof = profiler(device).__enter__()
            if batch_idx == 0:
                sync(device)
                self.marks.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            sync(device)
            self.marks.append(time.perf_counter())
            if getattr(self, "prof", None) is not None:
                self.prof.__exit__(None, None, None)
                print(f"  {_short(attn)} stage {stage}, one step: " + kernel_table(self.prof, device), flush=True)
                self.prof = None
            if batch_idx == 0:  # before any update: equal across attention variants (same init, same batch)
                self.first_loss = float(outputs["loss"])

    timer = Timer()
    trainer = L.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed", max_steps=n, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
                        default_root_dir=tempfile.mkdtemp(prefix="bench_"))
    loader = DataLoader(Repeat(), batch_size=None, pin_memory=device.type == "cuda")
    torch.manual_seed(args.seed)  # every variant starts from the same weights
    trainer.fit(module, loader)
    levers = [f"attn={attn}", f"{args.ce} CE", "compiled blocks" if args.compile else "eager",
              f"AC {args.ac_layers}/{cfg.n_layer} layers", "fused AdamW" if fused else "AdamW",
              f"first loss {timer.first_loss:.4f}"]
    res = Result(f"ours stage {stage} {_short(attn)}", int((batch["task_ids"] > 0).sum()), step_flops(cfg, batch),
                 note=", ".join(levers))
    res.times = [b - a for a, b in zip(timer.marks, timer.marks[1:])][args.warmup:args.warmup + args.steps]
    res.peak_bytes = _peak(device)
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    if not math.isfinite(loss):
        raise RuntimeError(f"stage {stage}: non-finite loss {loss}")
    del trainer, module
    _free(device)
    return res


def _short(attn: str) -> str:
    return {"varlen_attention": "varlen", "flex_attention": "flex"}.get(attn, attn)


def enable_activation_checkpointing(janus) -> None:
    """Non-reentrant checkpointing of every transformers layer (per-layer flags may be switched off after).
    `activation_checkpointing_enable` is transformers >= 5.2x's name; older 5.x only has the alias."""
    fn = getattr(janus, "activation_checkpointing_enable", None)
    if fn is not None:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        janus.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _guarded(name: str, tokens: int, flops: float, device, fn) -> Result:
    """Run one variant; an error (out of memory, a compile failure) becomes a table row instead of
    ending the run and losing the variants already measured. The row is printed at once, so a run
    cut off by a timeout still reports what finished."""
    try:
        r = fn()
    except torch.OutOfMemoryError:
        failed = "out of memory (try fewer --rows or --ac-layers N)"
    except Exception as e:  # noqa: BLE001 - reported in the table, with its type
        failed = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    else:
        print(f"  done: {r.name}: {1e3 * r.step_s:.1f} ms/step, {r.tokens_per_s:.0f} tokens/s", flush=True)
        return r
    _free(device)  # outside the except block: the traceback no longer holds the model
    print(f"  {name}: {failed}", flush=True)
    return Result(name, tokens, flops, failed=failed)


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (automatic without a GPU)")
    ap.add_argument("--rows", type=int, default=None,
                    help="packed rows per step (default 2 = 8192 tokens, which leaves room on an 80 GB card for "
                         "the plain step's full fp32 logits; 4 is the DESIGN anchor's batch; tiny 2)")
    ap.add_argument("--pack-length", type=int, default=None, help="tokens per row (default 4096; tiny 512)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3, tiny 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10, tiny 3)")
    ap.add_argument("--stages", default="2,1", help="our stages to time, e.g. 2,1")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain transformers baseline")
    ap.add_argument("--attn", default="sdpa,varlen_attention",
                    help="LLM attention of our step, several comma-separated: sdpa | varlen_attention | flex_attention "
                         "| flash_attention_2 | eager (packed documents: varlen and flex skip the masked blocks)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile each decoder layer (default: on with a GPU)")
    ap.add_argument("--ac-layers", type=int, default=0, help="activation-checkpoint the first N decoder layers")
    ap.add_argument("--chunk-elements", type=int, default=None, help="logits per cross-entropy chunk (default 2**27)")
    ap.add_argument("--ce", choices=["chunked", "unchunked"], default="chunked",
                    help="unchunked: A/B the full-logits cross-entropy inside our step")
    ap.add_argument("--no-fused-adamw", action="store_true", help="plain (foreach) AdamW for our step too")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: known GPUs)")
    ap.add_argument("--profile", action="store_true",
                    help="print the busiest kernels of one extra step of our first variant (after the timed steps)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.tiny = args.tiny or not cuda
    d = dict(rows=2, pack_length=512, warmup=1, steps=3) if args.tiny else dict(rows=2, pack_length=4096, warmup=3, steps=10)
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.compile is None:
        args.compile = cuda and not args.tiny
    args.stages = [int(s) for s in str(args.stages).split(",") if s]
    args.attn = [a for a in str(args.attn).split(",") if a]
    return args


def main(argv=None) -> list[Result]:
    import logging
    import warnings

    import lightning  # noqa: F401  (sets its loggers' levels on import; quieten them afterwards)

    args = parse_args(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-Trainer banners
    warnings.filterwarnings("ignore", message=r".*(eval mode|val_dataloader|LeafSpec|does not have many workers).*")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        hw = f"{torch.cuda.get_device_name(device)} | CUDA {torch.version.cuda}"
    else:
        hw = f"CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    import lightning
    import transformers

    print(f"hardware: {hw} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"lightning {lightning.__version__}")
    with tempfile.TemporaryDirectory() as tokdir:
        cfg, proc = build_processor(args.tiny, args.pack_length, tokdir)
        print(f"shapes: {cfg.name} ({cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}, {cfg.num_image_tokens} "
              f"image tokens), random init, bf16-mixed" + ("  [tiny: checks that it runs; CPU numbers say nothing "
                                                             "about GPU speed]" if args.tiny else ""))
        batch = stage2_batch(cfg, proc, args.rows, args.pack_length, args.seed)
        print("batch: Stage II mix, " + describe(batch))
        batch.pop("_samples")
        p = part_params(cfg)
        M = lambda n: f"{n / 1e6:.4g}M"  # noqa: E731
        print(f"MFU = model FLOPs / step time / peak; model FLOPs = 6 x (LLM {M(p['llm'])} params x real tokens "
              f"+ lm_head {M(p['lm_head'])} x supervised text + gen_head {M(p['gen_head'])} x supervised codes "
              f"+ gen_aligner {M(p['gen_aligner'])} x code inputs + SigLIP+aligner {M(p['vision'] + p['aligner'])} x "
              f"patches) + 6 x n_layer x n_embd x sum over documents L_doc^2 (lit_janus.flops.step_flops; frozen "
              f"parts counted)")
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
        print(f"peak: {f'{peak / 1e12:.0f} TFLOP/s dense bf16' if peak else 'n/a (no known GPU peak; MFU not shown)'}")
        print(f"timing: median of {args.steps} steps after {args.warmup} warm-up steps")
        results = []
        tokens, flops = int((batch["task_ids"] > 0).sum()), step_flops(cfg, batch)
        if not args.no_plain:
            results.append(_guarded("plain HF Llama (eager)", tokens, flops, device,
                                    lambda: run_plain(cfg, batch, device, args.warmup, args.steps)))
        ours = [(stage, attn) for stage in args.stages for attn in args.attn]
        for i, (stage, attn) in enumerate(ours):  # --profile: the first of our variants only
            results.append(_guarded(f"ours stage {stage} {_short(attn)}", tokens, flops, device,
                                    lambda: run_ours(cfg, batch, device, tokdir, stage, attn, args,
                                                     profile=args.profile and i == 0)))

    print(f"\n{'variant':34s} {'tokens':>7s} {'step ms':>9s} {'tokens/s':>10s} {'TFLOP/step':>10s} "
          f"{'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s}  levers")
    for r in results:
        if r.failed:
            print(f"{r.name:34s} {r.tokens:7d}  {r.failed}")
            continue
        tf = r.flops / r.step_s / 1e12
        mfu = f"{100 * r.flops / r.step_s / peak:5.1f}%" if peak else "   n/a"
        mem = f"{r.peak_bytes / 2**30:8.2f}" if r.peak_bytes is not None else "     n/a"
        print(f"{r.name:34s} {r.tokens:7d} {1e3 * r.step_s:9.1f} {r.tokens_per_s:10.0f} {r.flops / 1e12:10.3f} "
              f"{tf:8.3f} {mfu} {mem}  {r.note}")
    ok = [r for r in results if not r.failed]
    plain = next((r for r in ok if r.name.startswith("plain")), None)
    best = {st: min((r for r in ok if r.name.startswith(f"ours stage {st} ")), key=lambda r: r.step_s, default=None)
            for st in (1, 2)}
    s2, s1 = best[2], best[1]
    print()
    if plain and s2:
        ratio = s2.tokens_per_s / plain.tokens_per_s
        print(f"ratio {s2.name} / plain tokens/s: {ratio:.2f}x  (target >= 1.3x on one H100"
              + (")" if device.type == "cuda" else "; this is a CPU tiny run, not a measurement of it)"))
    if s1 and s2:
        ratio = s1.tokens_per_s / s2.tokens_per_s
        print(f"ratio {s1.name} / {s2.name} tokens/s: {ratio:.2f}x  (stage 1 faster: {'yes' if ratio > 1 else 'NO'}"
              + (")" if not args.tiny else "; tiny shapes are overhead-bound, this says nothing)"))
    if peak and s2:
        print(f"MFU {s2.name}: {100 * s2.flops / s2.step_s / peak:.1f}%  (target >= 50% on one H100)")
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()

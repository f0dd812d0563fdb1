"""VQA from perfect image tokens: what the shapes LLM alone can learn of ShapesWorld's questions.

This is to understanding what the VQ-reconstruction row is to generation: a ceiling that no
encoder can lift. Each patch of a scene becomes one symbol, the colour and shape of the object
covering most of it or background, so the LLM sees everything an ideal encoder could tell it.
The 64 symbols stand where Janus puts the image tokens, before the question. Their position reaches
the LLM only through RoPE, as in Janus. `--pos2d` adds learned row and column embeddings (an encoder
that kept patch position perfectly); `--question-first` puts the question before the symbols;
`--turns N` trains on N distinct questions per scene (a multi-turn conversation); `--scratchpad`
has position answers name both objects' grid columns (rows) before the relation, "c2 c5 left". The
LLM is the `shapes` preset's (`--n-layer` / `--n-embd` to vary it), randomly initialised, trained
with Stage II's optimiser on the chosen short-answer types. It is scored on fresh scenes (greedy
first answer word, the word that decides every short answer).

    python -m lit_janus.shapes.oracle_vqa --types color --steps 500
    python -m lit_janus.shapes.oracle_vqa --types position --steps 1500 --pos2d --out runs/oracle_position.json
    python -m lit_janus.shapes.oracle_vqa --types exists --turns 8 --steps 450
    python -m lit_janus.shapes.oracle_vqa --types position --pos2d --turns 8 --scratchpad --steps 2400

What it found is in configs/shapes/README.md ("VQA from perfect image tokens").
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_janus.config import Config
from lit_janus.shapes import world as W

SHORT_TYPES = ("color", "count", "shape", "position", "exists")
SPECIALS = ("<pad>", "<bg>", "<answer>", "<eos>")
GRID = 8  # 64 px scenes in 8-pixel patches


def patch_symbols(scene: W.Scene, image_size: int = 64, patch: int = 8, min_pixels: int = 8) -> list[str]:
    """One symbol per patch, row by row: `<red_circle>` for the object covering most of the patch
    (at least `min_pixels` of it), else `<bg>`."""
    labels = torch.frombuffer(bytearray(W.label_map(scene, image_size).tobytes()), dtype=torch.uint8).long()
    g = image_size // patch
    per_patch = labels.view(g, patch, g, patch).permute(0, 2, 1, 3).reshape(g * g, patch * patch)
    counts = F.one_hot(per_patch, len(scene.objects) + 1).sum(1)
    counts[:, 0] = 0
    best, owner = counts.max(1)
    names = ["<bg>"] + [f"<{o.color}_{o.shape}>" for o in scene.objects]
    return [names[k] if n >= min_pixels else "<bg>" for k, n in zip(owner.tolist(), best.tolist())]


def vocabulary(scratchpad: bool = False) -> list[str]:
    """Specials, the colour-shape symbols, ShapesWorld's words; with `scratchpad` also the grid column and
    row tokens `c0`..`c7`, `r0`..`r7` (appended, so the other ids do not move)."""
    symbols = [f"<{c}_{s}>" for c, s in W.ALL_COMBOS]
    grid = [f"c{i}" for i in range(GRID)] + [f"r{i}" for i in range(GRID)] if scratchpad else []
    return list(SPECIALS) + symbols + sorted(set(W.vocabulary()) | set(W.PUNCTUATION)) + grid


_POSITION = re.compile(r"is the (\w+ \w+) (left or right of|above or below) the (\w+ \w+)\?")


def scratchpad_answer(scene: W.Scene, question: str, answer: str, qtype: str) -> str:
    """A position answer that first names where both objects are: "is the red circle left or right of
    the blue square?" -> "c2 c5 left" (the grid columns of their centres; rows `r` for above/below).
    Reading a position off each object is one lookup the LLM can be taught token by token; the
    relation is then a comparison of two tokens it has just written. Other answers are unchanged."""
    if qtype != "position":
        return answer
    m = _POSITION.fullmatch(question)
    if m is None:
        raise ValueError(f"not a position question of ShapesWorld's form: {question!r}")
    by_phrase = {o.phrase: o for o in scene.objects}
    a, b = by_phrase[m[1]], by_phrase[m[3]]
    axis, name = (0, "c") if m[2] == "left or right of" else (1, "r")  # grid_cell is (column, row)
    return f"{name}{W.grid_cell(a, GRID)[axis]} {name}{W.grid_cell(b, GRID)[axis]} {answer}"


class Examples:
    """Seeded draws of (prompt ids, answer ids, question type): scenes with 1-4 objects.

    With `turns` > 1 each scene carries that many distinct questions, each followed by its answer
    (a multi-turn conversation, as `ShapesSource(turns=...)` builds for the pipeline): more supervised
    answers per scene. `batch` supervises every answer; `accuracy` scores the first. With
    `scratchpad`, position answers are `scratchpad_answer`s.
    """

    def __init__(self, types: tuple[str, ...], seed: int, question_first: bool = False, turns: int = 1,
                 scratchpad: bool = False):
        unknown = set(types) - set(SHORT_TYPES)
        if unknown or not types:
            raise ValueError(f"types must be among {SHORT_TYPES}, got {types}")
        if turns < 1 or (turns > 1 and question_first):
            raise ValueError(f"turns must be >= 1, and 1 with question_first; got {turns}")
        self.types, self.rng, self.question_first, self.turns = types, random.Random(seed), question_first, turns
        self.scratchpad = scratchpad
        self.ids = {t: i for i, t in enumerate(vocabulary(scratchpad))}

    def _questions(self, scene: W.Scene) -> list[tuple[str, str, str]]:
        """Up to `turns` distinct (question, answer, type) about `scene`; empty when it cannot answer one.
        One draw for one question (as before turns existed: the same data), else a few per question."""
        return W.distinct_questions(scene, self.rng, self.types, self.turns, 1 if self.turns == 1 else 4 * self.turns)

    def draw(self) -> tuple[list[int], list[list[int]], str]:
        """(prompt ids up to the first `<answer>`, [answer ids + `<eos>`, then each later turn's question,
        `<answer>`, answer, `<eos>`], the first question's type)."""
        while not (qas := self._questions(scene := W.random_scene(self.rng))):
            pass
        image = [self.ids[s] for s in patch_symbols(scene)]
        words = lambda text: [self.ids[w] for w in W.split_words(text)]  # noqa: E731
        if self.scratchpad:
            qas = [(q, scratchpad_answer(scene, q, a, t), t) for q, a, t in qas]
        (question, answer, qtype), *more = qas
        first = words(question)
        prompt = (first + image if self.question_first else image + first) + [self.ids["<answer>"]]
        parts = [words(answer) + [self.ids["<eos>"]]]
        for q, a, _ in more:
            parts += [words(q) + [self.ids["<answer>"]], words(a) + [self.ids["<eos>"]]]
        return prompt, parts, qtype

    def batch(self, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Right-padded ids [n, T], labels [n, T] (-100 except where the next token is an answer's) and
        the `draw`s they hold."""
        drawn = [self.draw() for _ in range(n)]
        T = max(len(p) + sum(map(len, parts)) for p, parts, _ in drawn)
        x = torch.zeros(n, T, dtype=torch.long)
        y = torch.full((n, T), -100, dtype=torch.long)
        for r, (p, parts, _) in enumerate(drawn):
            x[r, :len(p)] = torch.tensor(p)
            at = len(p)
            for k, part in enumerate(parts):  # even parts are answers (supervised), odd ones questions
                x[r, at:at + len(part)] = torch.tensor(part)
                if k % 2 == 0:
                    y[r, at - 1:at + len(part) - 1] = torch.tensor(part)
                at += len(part)
        return x.to(device), y.to(device), drawn


class OracleLM(nn.Module):
    """The shapes preset's LLM (transformers' Llama, as inside JanusPro) over the symbol vocabulary."""

    def __init__(self, config: Config, n_vocab: int, pos2d: bool = False, grid: int = 8):
        super().__init__()
        from transformers import LlamaForCausalLM

        text = config.to_hf().text_config
        text.vocab_size = n_vocab
        self.lm = LlamaForCausalLM(text)
        self.grid = grid
        # distinct from the first step, like the token embeddings (a zero start leaves nothing to attend by)
        self.pos2d = nn.Parameter(torch.randn(2, grid, config.n_embd) * text.initializer_range) if pos2d else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.lm.model.embed_tokens(x)
        if self.pos2d is not None:  # row + column embedding on the image symbols (the first g*g tokens)
            g = self.grid
            pos = (self.pos2d[0][:, None] + self.pos2d[1][None, :]).reshape(g * g, -1)
            e = torch.cat([e[:, :g * g] + pos, e[:, g * g:]], 1)
        return self.lm(inputs_embeds=e).logits


@torch.no_grad()
def greedy(model: OracleLM, prompt: list[int], n: int) -> list[int]:
    """`n` tokens written greedily after `prompt` (no cache: a few tokens of a short sequence)."""
    x = torch.tensor([prompt], device=next(model.parameters()).device)
    for _ in range(n):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], 1)
    return x[0, len(prompt):].tolist()


@torch.no_grad()
def accuracy(model: OracleLM, examples: Examples, n: int) -> dict[str, float]:
    """The greedy answer to the first question, per type, on `n` fresh draws: its first word, the word
    that decides every short answer. With a scratchpad, position is scored on the relation word the
    model writes after its own two grid tokens, and `position_grounding` on the first grid token."""
    hits = defaultdict(list)
    for start in range(0, n, 50):
        x, _, drawn = examples.batch(min(50, n - start), next(model.parameters()).device)
        logits = model(x).cpu()
        for r, (p, parts, qtype) in enumerate(drawn):
            first = int(logits[r, len(p) - 1].argmax())
            if examples.scratchpad and qtype == "position":  # parts[0]: grid, grid, relation, <eos>
                hits["position"].append(greedy(model, p, 3)[-1] == parts[0][2])
                hits["position_grounding"].append(first == parts[0][0])
            else:
                hits[qtype].append(first == parts[0][0])
    return {t: round(sum(v) / len(v), 3) for t, v in sorted(hits.items())}


def train(types: tuple[str, ...], steps: int, batch: int = 32, lr: float = 1e-3, pos2d: bool = False,
          question_first: bool = False, turns: int = 1, n_layer: int | None = None, n_embd: int | None = None,
          eval_every: int = 250, n_eval: int = 300, seed: int = 0, device: str | None = None,
          scratchpad: bool = False, log=print) -> list[dict]:
    """Train a fresh OracleLM; returns the evaluation history [{step, questions, loss, accuracy, seconds}]."""
    if pos2d and question_first:
        raise ValueError("pos2d needs the symbols at the start of the sequence: not with question_first")
    config = Config.from_name("shapes")
    if n_layer is not None:
        config = replace(config, n_layer=n_layer)
    if n_embd is not None:
        config = replace(config, n_embd=n_embd, intermediate_size=(config.intermediate_size * n_embd) // config.n_embd)
    torch.manual_seed(seed)
    data = Examples(types, seed, question_first, turns, scratchpad)
    held_out = lambda: Examples(types, seed + 90001, question_first, scratchpad=scratchpad)  # noqa: E731 (same draws every time)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = OracleLM(config, len(vocabulary(scratchpad)), pos2d=pos2d).to(device)  # the symbols start each sequence
    # Stage II's optimiser (configs/shapes/stage2.yaml), constant LR
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    history, running, seen, t0 = [], 0.0, 0, time.perf_counter()
    for step in range(1, steps + 1):
        x, y, drawn = data.batch(batch, device)
        seen += sum((len(parts) + 1) // 2 for _, parts, _ in drawn)  # supervised answers
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item()
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "questions": seen, "loss": round(running / (1 - 0.98 ** step), 4),
                   "accuracy": accuracy(model.eval(), held_out(), n_eval), "seconds": round(time.perf_counter() - t0)}
            model.train()
            history.append(row)
            log(json.dumps(row))
    return history


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(SHORT_TYPES), help=f"question types, comma-separated ({SHORT_TYPES})")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32, help="questions per step (one per scene)")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW LR, constant (Stage II's)")
    ap.add_argument("--pos2d", action="store_true", help="add learned row/column embeddings to the image symbols")
    ap.add_argument("--question-first", action="store_true", help="the question before the image symbols")
    ap.add_argument("--turns", type=int, default=1,
                    help="distinct questions per scene in training, all answers supervised (held-out: one)")
    ap.add_argument("--scratchpad", action="store_true",
                    help='position answers name both grid columns (rows) before the relation: "c2 c5 left"')
    ap.add_argument("--n-layer", type=int, default=None, help="LLM layers (default: the shapes preset's 4)")
    ap.add_argument("--n-embd", type=int, default=None, help="LLM width (default 256; the MLP scales with it)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--n-eval", type=int, default=300, help="held-out questions per evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda when available (fp32 either way)")
    ap.add_argument("--out", type=Path, default=None, help="write the history as JSON here")
    args = ap.parse_args(argv)
    history = train(tuple(t for t in args.types.split(",") if t), args.steps, args.batch, args.lr, args.pos2d,
                    args.question_first, args.turns, args.n_layer, args.n_embd, args.eval_every, args.n_eval,
                    args.seed, args.device, args.scratchpad)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "history": history},
                                       indent=1))
    return history


if __name__ == "__main__":
    main()

"""Sampling from Janus-Pro: text-to-image with classifier-free guidance, and answers about images.

Three text-to-image loops, one distribution:

- `generate_official`: the algorithm of DeepSeek's `generation_inference.py` (interleaved cond/uncond
  rows, the unconditional prompt padded between its first token and `<begin_of_image>`, no attention
  mask, eager forward with a growing cache, `torch.multinomial`). The benchmark baseline, nothing else.
- `generate_reference`: one prompt at a time, eager transformers forward with a growing
  `DynamicCache`, our sampler. Short enough to read as the specification of the fast loop.
- `generate`: many prompts in one batch through `lit_janus.decoder.StaticDecoder` (a preallocated KV
  cache, a lean forward, CUDA graphs on a GPU).

The sampler and its counter-based noise are in `lit_janus.sampling`: an image depends on its own
seed only, whichever loop drew it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_janus.decoder import StaticDecoder
from lit_janus.sampling import cfg_logits, sample, seed_key


def _cache_kwarg(llm) -> str:
    # transformers renamed past_key_values -> cache (5.2x); support both spellings
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


# ---- text-to-image ------------------------------------------------------------------------------
@dataclass
class Generation:
    """The images of one `generate` call, prompt-major: prompt 0's images first."""

    codes: torch.Tensor  # [N, num_image_tokens] VQ codes
    images: torch.Tensor | None  # [N, S, S, 3] uint8 on CPU (None when decode=False)
    prompt_index: list[int]  # which prompt each image belongs to
    image_index: list[int]  # its index among that prompt's images
    seeds: list[int]  # the seed of its prompt


def image_requests(processor, prompts: Sequence[str], images_per_prompt: int | Sequence[int] = 1,
                   seeds: int | Sequence[int] = 0):
    """Token ids, noise keys and bookkeeping for each image of each prompt. Raises (ValueError,
    PromptTooLongError) on an empty or over-long prompt."""
    n = [images_per_prompt] * len(prompts) if isinstance(images_per_prompt, int) else list(images_per_prompt)
    sd = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
    if not (len(n) == len(sd) == len(prompts)):
        raise ValueError("images_per_prompt and seeds must give one value per prompt")
    if not prompts or min(n) < 1:
        raise ValueError(f"need at least one prompt and images_per_prompt >= 1, got {len(prompts)} prompt(s) "
                         f"and images_per_prompt {images_per_prompt}")
    cond, uncond, keys, pidx, iidx, seed_of = [], [], [], [], [], []
    for p, (prompt, k, seed) in enumerate(zip(prompts, n, sd)):
        ids = processor.t2i_prompt_ids(prompt)
        for j in range(k):
            cond.append(ids)
            uncond.append(processor.unconditional_ids(ids))
            keys.append(seed_key(seed, j))
            pidx.append(p)
            iidx.append(j)
            seed_of.append(seed)
    return cond, uncond, keys, pidx, iidx, seed_of


@torch.no_grad()
def generate(model, processor, prompts: Sequence[str], *, images_per_prompt: int | Sequence[int] = 1,
             seeds: int | Sequence[int] = 0, cfg_weight: float = 5.0, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, decode: bool = True,
             decoder: StaticDecoder | None = None) -> Generation:
    """Text-to-image for a batch of prompts with the fast sampler.

    `seeds`: one per prompt, or an int s giving prompt i the seed s + i. Image j of a prompt with
    seed s is the same whatever else is in the batch. Pass a `StaticDecoder` to reuse its cache
    and CUDA graphs across calls."""
    cond, uncond, keys, pidx, iidx, seed_of = image_requests(processor, prompts, images_per_prompt, seeds)
    decoder = decoder or StaticDecoder(model)
    codes = decoder.images(cond, uncond, keys, cfg_weight=cfg_weight, temperature=temperature, top_k=top_k,
                           top_p=top_p, pad_id=processor.pad_id)
    images = decode_images(model, codes) if decode else None
    return Generation(codes=codes, images=images, prompt_index=pidx, image_index=iidx, seeds=seed_of)


@torch.no_grad()
def decode_images(model, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """VQ codes [N, n] -> uint8 images [N, S, S, 3] on CPU, decoded `batch_size` at a time."""
    from lit_janus.vq import to_uint8

    return torch.cat([to_uint8(model.decode_codes(c)).cpu() for c in codes.split(batch_size)])


@torch.no_grad()
def generate_reference(model, cond_ids: Sequence[int], uncond_ids: Sequence[int], keys: Sequence[int], *,
                       cfg_weight: float = 5.0, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, n_tokens: int | None = None,
                       prefix: torch.Tensor | None = None, prefix_len: Sequence[int] | None = None) -> torch.Tensor:
    """The straightforward loop for ONE prompt: its len(keys) images as cond rows then uncond rows,
    no padding, eager transformers forward with a growing DynamicCache, our sampler.
    Returns codes [len(keys), n_tokens].

    `prefix` [len(keys), k] and `prefix_len` (one per image, each <= k): image i's first prefix_len[i]
    codes are given rather than sampled, a teacher-forced continuation (`lit_janus.shapes.count_probe`).
    The codes after them draw the same noise as they would without a prefix."""
    llm, dev = model.llm, model.llm.embed_tokens.weight.device
    n, n_tokens = len(keys), n_tokens or model.config.num_image_tokens
    if prefix is not None:
        if prefix_len is None or len(prefix_len) != n or prefix.shape[0] != n or max(prefix_len) > prefix.shape[1]:
            raise ValueError(f"prefix {tuple(prefix.shape)} needs one row and one prefix_len (at most its width) "
                             f"per image ({n}), got prefix_len {prefix_len}")
        prefix, given_len = prefix.to(dev), torch.as_tensor(list(prefix_len), device=dev)
    ids = torch.tensor([list(cond_ids)] * n + [list(uncond_ids)] * n, device=dev)
    key_t = torch.tensor(list(keys), dtype=torch.long, device=dev)
    kw = _cache_kwarg(llm)
    out = llm(inputs_embeds=llm.embed_tokens(ids), use_cache=True, **{kw: None})
    cache, h = getattr(out, kw), out.last_hidden_state[:, -1]
    codes = torch.empty(n, n_tokens, dtype=torch.long, device=dev)
    for j in range(n_tokens):
        logits = model.gen_head(h).float()
        tok = sample(cfg_logits(logits[:n], logits[n:], cfg_weight), temperature, top_k, top_p, key_t, j)
        if prefix is not None and j < prefix.shape[1]:
            tok = torch.where(given_len > j, prefix[:, j], tok)
        codes[:, j] = tok
        if j + 1 < n_tokens:
            x = model.code_embeddings(tok)
            out = llm(inputs_embeds=torch.cat([x, x])[:, None], use_cache=True, **{kw: cache})
            cache, h = getattr(out, kw), out.last_hidden_state[:, -1]
    return codes


@torch.no_grad()
def generate_official(model, prompt_ids: Sequence[int], pad_id: int, *, parallel_size: int = 16,
                      cfg_weight: float = 5.0, temperature: float = 1.0, n_tokens: int | None = None,
                      decode: bool = True):
    """DeepSeek's generation_inference.py algorithm, for benchmarking: `parallel_size` images of one
    prompt; rows interleaved (even = conditional, odd = the prompt with everything between its
    first and last token replaced by pad); no attention mask; the inner LLM with a growing cache;
    gen_head on the last position; softmax + torch.multinomial. Returns (codes, uint8 images|None)."""
    llm, dev = model.llm, model.llm.embed_tokens.weight.device
    n_tokens = n_tokens or model.config.num_image_tokens
    tokens = torch.tensor(list(prompt_ids), device=dev).repeat(parallel_size * 2, 1)
    tokens[1::2, 1:-1] = pad_id
    inputs_embeds = llm.embed_tokens(tokens)
    generated = torch.zeros((parallel_size, n_tokens), dtype=torch.int, device=dev)
    kw, cache = _cache_kwarg(llm), None
    for i in range(n_tokens):
        out = llm(inputs_embeds=inputs_embeds, use_cache=True, **{kw: cache})
        cache = getattr(out, kw)
        logits = model.gen_head(out.last_hidden_state[:, -1, :])
        logit_cond, logit_uncond = logits[0::2, :], logits[1::2, :]
        logits = logit_uncond + cfg_weight * (logit_cond - logit_uncond)
        probs = torch.softmax(logits / temperature, dim=-1)
        next_token = torch.multinomial(probs, num_samples=1)
        generated[:, i] = next_token.squeeze(-1)
        next_token = torch.cat([next_token, next_token], dim=1).view(-1)
        inputs_embeds = model.code_embeddings(next_token).unsqueeze(1)
    images = decode_images(model, generated.long()) if decode else None
    return generated, images


# ---- understanding ------------------------------------------------------------------------------
def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


@torch.no_grad()
def question_embeds(model, processor, images: Any, question: str) -> torch.Tensor:
    """Input embeddings [P, D] of one understanding prompt: `images` is an image (PIL or path), a
    list of them, or None. Raises ValueError / FileNotFoundError / PromptTooLongError for bad input."""
    from lit_janus.processor import PromptTooLongError

    ims = [] if images is None else _as_list(images)
    ids = processor.understanding_ids(question, len(ims))
    if len(ids) > processor.max_length:
        raise PromptTooLongError(f"question with {len(ims)} image(s) is {len(ids)} tokens; the context is "
                                 f"{processor.max_length}")
    dev = model.llm.embed_tokens.weight.device
    t = torch.tensor(ids, device=dev)[None]
    if not ims:
        return model.input_embeddings(t)[0]
    pixels = torch.stack([processor.understanding_pixels(x) for x in ims]).to(dev)
    return model.input_embeddings(t, image_mask=t == processor.image_id, pixel_values=pixels)[0]


@torch.no_grad()
def answer_ids(model, processor, images: Sequence[Any], questions: Sequence[str], *, max_new_tokens: int = 256,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               seeds: int | Sequence[int] = 0, stop_at_eos: bool = True,
               decoder: StaticDecoder | None = None) -> list[list[int]]:
    """Answer token ids (without the closing eos) for each (image(s), question) pair, batched with
    left padding. images[i]: an image (PIL or path), a list of them, or None for a text-only question.
    `seeds` (used when sampling): one per question, or an int s giving question i the seed s + i."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} image entries for {len(questions)} questions")
    sd = [seeds + i for i in range(len(questions))] if isinstance(seeds, int) else list(seeds)
    embeds = [question_embeds(model, processor, im, q) for im, q in zip(images, questions)]
    decoder = decoder or StaticDecoder(model)
    return decoder.text(embeds, [seed_key(s) for s in sd], max_new_tokens=max_new_tokens,
                        eos_id=processor.eos_id if stop_at_eos else None, temperature=temperature,
                        top_k=top_k, top_p=top_p)


def answer(model, processor, images: Sequence[Any], questions: Sequence[str], *, max_new_tokens: int = 256,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           seeds: int | Sequence[int] = 0, decoder: StaticDecoder | None = None) -> list[str]:
    """Answers to questions about images (greedy by default; temperature > 0 samples, reproducibly
    per question from `seeds`). Batched with a KV cache; each answer stops at eos."""
    ids = answer_ids(model, processor, images, questions, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, seeds=seeds, decoder=decoder)
    return [processor.decode(x).strip() for x in ids]


__all__ = [
    "Generation", "answer", "answer_ids", "decode_images", "generate", "generate_official", "generate_reference",
    "image_requests", "question_embeds",
]

"""Turns images and text into `Sample`s: DeepSeek's chat format, both image preprocessings, labels.

Sequence layouts (DESIGN §1):
- understanding: [system]\\n\\n<|User|>: <boi><image>x576<eoi>\\nQUESTION\\n\\n<|Assistant|>: ANSWER<eos>
  loss on the answer tokens (and the closing <eos>) only;
- text-to-image: <|User|>: PROMPT\\n\\n<|Assistant|>:<boi> + 576 codes, no system prompt; gen_head
  at <boi> and at code0 .. code574 predicts code0 .. code575;
- CFG unconditional: the same ids with everything between the first token and <boi> set to pad;
- text: <bos>TEXT<eos>, ordinary next-token loss.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from lit_janus.batch import IGNORE, Sample
from lit_janus.tokenizer import (
    ASSISTANT, BOI, DEFAULT_SYSTEM_PROMPT, EOI, IMAGE, PAD, USER, special_token_id,
)


class PromptTooLongError(ValueError):
    """A prompt or conversation does not fit the context; raised instead of silently truncating."""


@dataclass
class ImageSettings:
    image_size: int = 384
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_size: int = 14


def _to_tensor(image: Image.Image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # bicubic with antialias, as DeepSeek's processor (torchvision) does; clamp the bicubic overshoot
    return F.interpolate(x[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def load_rgb(image) -> Image.Image:
    """An RGB PIL image from a PIL image, a path, encoded bytes or a binary file object. Errors name
    the file: FileNotFoundError if it is missing, ValueError if it is not a readable image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        image = io.BytesIO(image)
    if not isinstance(image, (str, os.PathLike)) and not hasattr(image, "read"):
        raise ValueError(f"unsupported image value of type {type(image).__name__}")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {image}") from None
    except Exception as e:  # PIL raises several types for truncated/corrupt files
        name = image if isinstance(image, (str, os.PathLike)) else "<bytes>"
        raise ValueError(f"cannot read image {name}: {e}") from None


def understanding_pixels(image: Image.Image | str, s: ImageSettings) -> torch.Tensor:
    """SigLIP input: long side -> image_size (bicubic), centre-pad to square with the mean colour
    (grey 127 for Janus-Pro), normalise. Returns [3, S, S]."""
    x = _to_tensor(load_rgb(image))
    h, w = x.shape[1:]
    side = max(h, w)
    nh, nw = max(int(h / side * s.image_size), s.min_size), max(int(w / side * s.image_size), s.min_size)
    x = _resize(x, nh, nw)
    background = torch.tensor([int(m * 255) / 255.0 for m in s.mean]).view(3, 1, 1)
    canvas = background.expand(3, s.image_size, s.image_size).clone()
    top, left = (s.image_size - nh) // 2, (s.image_size - nw) // 2
    canvas[:, top : top + nh, left : left + nw] = x
    return (canvas - torch.tensor(s.mean).view(3, 1, 1)) / torch.tensor(s.std).view(3, 1, 1)


def generation_pixels(image: Image.Image | str, image_size: int) -> torch.Tensor:
    """VQ input: short side -> image_size (bicubic), centre crop, scale to [-1, 1]. Returns [3, S, S]."""
    x = _to_tensor(load_rgb(image))
    h, w = x.shape[1:]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = _resize(x, nh, nw)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    return x[:, top : top + image_size, left : left + image_size] * 2 - 1


class JanusProcessor:
    """Chat formatting, tokenisation and image preprocessing for one tokenizer.

    Every special id is read from the tokenizer (the 1B and 7B tokenizers differ)."""

    def __init__(
        self,
        tokenizer,
        num_image_tokens: int = 576,
        image: ImageSettings | None = None,
        max_length: int = 4096,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ):
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.image = image or ImageSettings()
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise ValueError("the tokenizer defines no bos/eos token; Janus-Pro needs both")
        self.pad_id = special_token_id(tokenizer, PAD)
        self.image_id = special_token_id(tokenizer, IMAGE)
        self.boi_id = special_token_id(tokenizer, BOI)
        self.eoi_id = special_token_id(tokenizer, EOI)

    # ---- text -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """DeepSeek's template up to (and including) the assistant's role tag."""
        head = f"{system}\n\n" if system else ""
        return f"{head}{USER}: {user}\n\n{ASSISTANT}:"

    def _check_length(self, n: int, what: str) -> None:
        if n > self.max_length:
            raise PromptTooLongError(f"{what} is {n} tokens; the context is {self.max_length}")

    # ---- understanding ----------------------------------------------------------------------
    def understanding_ids(self, question: str, n_images: int = 1) -> list[int]:
        """Prompt ids for a question about `n_images` images (placed before the question)."""
        if not question.strip():
            raise ValueError("empty question")
        user = "".join(f"{IMAGE}\n" for _ in range(n_images)) + question
        ids = [self.bos_id]
        for piece_i, piece in enumerate(self.chat_prompt(user, self.system_prompt).split(IMAGE)):
            if piece_i:
                ids += [self.boi_id] + [self.image_id] * self.num_image_tokens + [self.eoi_id]
            ids += self.encode(piece)
        self.check_image_slots(ids, n_images)
        return ids

    def check_image_slots(self, ids: list[int], n_images: int) -> None:
        """Raise ValueError unless `ids` hold exactly `num_image_tokens` placeholders per image: the
        model fills placeholder positions with image features, so a mismatch would fail the step."""
        slots = ids.count(self.image_id)
        if slots != n_images * self.num_image_tokens:
            raise ValueError(
                f"{n_images} image(s) need {n_images * self.num_image_tokens} {IMAGE} positions but the sequence "
                f"has {slots}: the images go before the question by themselves, so remove {IMAGE} markers from "
                "the text"
            )

    def understanding_sample(self, images, question: str, answer: str) -> Sample:
        """Training sample: loss on ' ANSWER<eos>' only. Raises PromptTooLongError rather than
        truncating a supervised answer, and ValueError for no images or a placeholder in the text."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("an understanding sample needs at least one image")
        if not answer.strip():
            raise ValueError("empty answer")
        prompt = self.understanding_ids(question, len(images))
        answer_ids = self.encode(" " + answer) + [self.eos_id]
        ids = prompt + answer_ids
        self._check_length(len(ids), "understanding sample")
        self.check_image_slots(ids, len(images))  # the answer may hold one too
        pixels = torch.stack([understanding_pixels(im, self.image) for im in images])
        t = torch.tensor(ids)
        text_labels = torch.full_like(t, IGNORE)
        start = len(prompt) - 1  # the last prompt position predicts the first answer token
        text_labels[start : len(ids) - 1] = t[start + 1 :]
        return Sample(
            input_ids=t, text_labels=text_labels, gen_labels=torch.full_like(t, IGNORE),
            gen_mask=torch.zeros_like(t, dtype=torch.bool), image_mask=t == self.image_id,
            task="und", pixel_values=pixels,
        )

    # ---- pure text --------------------------------------------------------------------------
    def text_sample(self, text: str, window: int = 0) -> Sample:
        """`<bos>TEXT<eos>`, all of it supervised. A document longer than `max_length` tokens is cut into
        windows of `max_length` that overlap by one token (each window's last token is the next one's first,
        so every token after `<bos>` is a target exactly once and every window has one), and this is window
        `window` mod their number: the data streams pass the epoch, so long documents are read a different
        window each epoch instead of being dropped (pretraining text is mostly longer than the 4096-token
        context)."""
        if not text.strip():
            raise ValueError("empty text")
        ids = [self.bos_id] + self.encode(text) + [self.eos_id]
        if len(ids) > self.max_length:
            stride = self.max_length - 1
            n = -(-(len(ids) - 1) // stride)  # the last window starts before the last token: >= 1 target
            start = (window % n) * stride
            ids = ids[start:start + self.max_length]
        t = torch.tensor(ids)
        text_labels = torch.full_like(t, IGNORE)
        text_labels[:-1] = t[1:]
        return Sample(
            input_ids=t, text_labels=text_labels, gen_labels=torch.full_like(t, IGNORE),
            gen_mask=torch.zeros_like(t, dtype=torch.bool), image_mask=torch.zeros_like(t, dtype=torch.bool),
            task="text",
        )

    # ---- text-to-image ----------------------------------------------------------------------
    def t2i_prompt_ids(self, prompt: str) -> list[int]:
        """`<bos><|User|>: PROMPT\\n\\n<|Assistant|>:<begin_of_image>` (no system prompt), as in
        DeepSeek's generation script. Raises for empty or over-long prompts."""
        if not prompt or not prompt.strip():
            raise ValueError("empty prompt")
        ids = [self.bos_id] + self.encode(self.chat_prompt(prompt)) + [self.boi_id]
        room = self.max_length - self.num_image_tokens
        if len(ids) > room:
            raise PromptTooLongError(
                f"prompt is {len(ids)} tokens but only {room} fit (context {self.max_length} minus "
                f"{self.num_image_tokens} image tokens): shorten it"
            )
        return ids

    def unconditional_ids(self, prompt_ids: list[int] | torch.Tensor):
        """CFG's unconditional row: keep the first token and the final <begin_of_image>, pad between."""
        if isinstance(prompt_ids, torch.Tensor):
            out = prompt_ids.clone()
            out[..., 1:-1] = self.pad_id
            return out
        return prompt_ids[:1] + [self.pad_id] * (len(prompt_ids) - 2) + prompt_ids[-1:]

    def t2i_sample(self, prompt: str, codes: torch.Tensor | None = None, cfg_dropout: float = 0.0,
                   rng: random.Random | None = None, pixels: torch.Tensor | None = None) -> Sample:
        """Training sample from a prompt and the image's VQ codes ([num_image_tokens] long), or from
        its pixels ([3, S, S] in [-1, 1]) to be encoded on the fly (`batch.fill_codes`). With
        probability `cfg_dropout` the prompt becomes the unconditional row used at sampling."""
        if (codes is None) == (pixels is None):
            raise ValueError("give exactly one of codes or pixels")
        if codes is None:
            codes = torch.zeros(self.num_image_tokens, dtype=torch.long)  # placeholders, see fill_codes
        codes = torch.as_tensor(codes, dtype=torch.long).flatten()
        if codes.numel() != self.num_image_tokens:
            raise ValueError(f"expected {self.num_image_tokens} image codes, got {codes.numel()}")
        prompt_ids = self.t2i_prompt_ids(prompt)
        if cfg_dropout and (rng or random).random() < cfg_dropout:
            prompt_ids = self.unconditional_ids(prompt_ids)
        P = len(prompt_ids)
        # inputs: prompt (ending in <boi>) + code0..code574; the last code is only ever a target
        ids = torch.cat([torch.tensor(prompt_ids), codes[:-1]])
        gen_labels = torch.full_like(ids, IGNORE)
        gen_labels[P - 1 :] = codes  # <boi> -> code0, code_i -> code_{i+1}
        gen_mask = torch.zeros_like(ids, dtype=torch.bool)
        gen_mask[P:] = True
        return Sample(
            input_ids=ids, text_labels=torch.full_like(ids, IGNORE), gen_labels=gen_labels,
            gen_mask=gen_mask, image_mask=torch.zeros_like(ids, dtype=torch.bool), task="t2i",
            gen_pixels=pixels,
        )

    # ---- images ---------------------------------------------------------------------------
    def understanding_pixels(self, image) -> torch.Tensor:
        return understanding_pixels(image, self.image)

    def generation_pixels(self, image) -> torch.Tensor:
        return generation_pixels(image, self.image.image_size)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

"""Raw records (formats in `sources.py`) to training `Sample`s, one function per task stream.

Every problem with a record raises (`BadRecord`, `PromptTooLongError`, or the OSError/ValueError of
an unreadable image): the stream decides whether to skip and count it or to stop (`strict`).
Nothing is truncated: a conversation that does not fit the context is rejected whole.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from lit_janus.batch import IGNORE, Sample
from lit_janus.data.sources import BadRecord
from lit_janus.processor import JanusProcessor, PromptTooLongError, load_rgb
from lit_janus.tokenizer import ASSISTANT, USER

USER_ROLES = {"user", "human", USER}
ASSISTANT_ROLES = {"assistant", "gpt", ASSISTANT}
IMAGE_MARKER = re.compile(r"<image>|<image_placeholder>")


def _field(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in record:
            return record[name]
    raise BadRecord(f"record has none of the fields {names}; it has {sorted(record)}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise BadRecord(f"empty {what}")
    return value


# ---- understanding --------------------------------------------------------------------------
def turns_of(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) pairs of an understanding record, in order."""
    if "conversations" not in record:
        return [(_text(record.get("question"), "question"), _text(record.get("answer"), "answer"))]
    conv = record["conversations"]
    if not isinstance(conv, list) or not conv:
        raise BadRecord("conversations must be a non-empty list of turns")
    turns, question = [], None
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise BadRecord(f"turn {i} is not an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role in USER_ROLES:
            if question is not None:
                raise BadRecord(f"turn {i}: two user turns in a row")
            question = _text(content, f"question (turn {i})")
        elif role in ASSISTANT_ROLES:
            if question is None:
                raise BadRecord(f"turn {i}: an assistant turn without a user turn before it")
            turns.append((question, _text(content, f"answer (turn {i})")))
            question = None
        else:
            raise BadRecord(f"turn {i}: unsupported role {role!r} (user/assistant; the system prompt is the "
                            "processor's)")
    if not turns:
        raise BadRecord("conversation has no answered user turn")
    # images always precede the first question (DeepSeek's template), so drop LLaVA-style markers
    q0 = IMAGE_MARKER.sub("", turns[0][0]).strip()
    turns[0] = (_text(q0, "question"), turns[0][1])
    return turns


def conversation_sample(processor: JanusProcessor, images: list, turns: list[tuple[str, str]]) -> Sample:
    """Understanding sample with every assistant turn supervised, in DeepSeek's multi-turn layout
    `... <|Assistant|>: A1<eos><|User|>: Q2\\n\\n<|Assistant|>: A2<eos>`. Raises PromptTooLongError
    if the whole conversation does not fit (never truncates an answer)."""
    first = processor.understanding_sample(images, *turns[0])
    if len(turns) == 1:
        return first
    ids, labels = first.input_ids.tolist(), first.text_labels.tolist()
    for question, answer in turns[1:]:
        prompt = processor.encode(f"{USER}: {question}\n\n{ASSISTANT}:")
        reply = processor.encode(" " + answer) + [processor.eos_id]
        # the last prompt position predicts the first answer token; <eos> predicts nothing
        labels += [IGNORE] * (len(prompt) - 1) + reply + [IGNORE]
        ids += prompt + reply
    if len(ids) > processor.max_length:
        raise PromptTooLongError(f"conversation of {len(turns)} turns is {len(ids)} tokens; the context is "
                                 f"{processor.max_length}")
    t = torch.tensor(ids)
    return Sample(
        input_ids=t, text_labels=torch.tensor(labels), gen_labels=torch.full_like(t, IGNORE),
        gen_mask=torch.zeros_like(t, dtype=torch.bool), image_mask=t == processor.image_id,
        task="und", pixel_values=first.pixel_values,
    )


def und_sample(processor: JanusProcessor, record: dict[str, Any]) -> Sample:
    images = record.get("images", record.get("image"))
    if images is None:
        raise BadRecord("understanding record has no image")
    images = images if isinstance(images, list) else [images]
    turns = turns_of(record)  # validate the text before paying for image decoding
    return conversation_sample(processor, [load_rgb(im) for im in images], turns)


# ---- text -----------------------------------------------------------------------------------
def text_sample(processor: JanusProcessor, record: dict[str, Any]) -> Sample:
    return processor.text_sample(_text(_field(record, "text"), "text"))


# ---- text-to-image --------------------------------------------------------------------------
_CODE_ARRAYS: dict[str, np.ndarray] = {}  # per process: memory-mapped [N, tokens] code arrays


def load_codes(value: Any, row: int | None = None) -> torch.Tensor:
    """VQ codes from a list, a `.npy` file, or row `row` of a `.npy` array of shape [N, tokens]."""
    if isinstance(value, list):
        return torch.tensor(value, dtype=torch.long)
    if not isinstance(value, str):
        raise BadRecord(f"codes must be a list or a .npy path, not {type(value).__name__}")
    if row is None:
        return torch.from_numpy(np.load(value).astype(np.int64)).flatten()
    if value not in _CODE_ARRAYS:
        _CODE_ARRAYS[value] = np.load(value, mmap_mode="r")
    codes = _CODE_ARRAYS[value][int(row)]
    if codes.min() < 0:  # rows the extractor could not fill stay -1
        raise BadRecord(f"row {row} of {value} holds no codes")
    return torch.from_numpy(codes.astype(np.int64))


def t2i_sample(processor: JanusProcessor, record: dict[str, Any], drop_prompt: bool = False) -> Sample:
    """Text-to-image sample from codes (preferred) or from an image to VQ-encode on the fly.
    `drop_prompt` gives the CFG unconditional layout (decided by the caller's seeded draw)."""
    caption = _text(_field(record, "caption", "prompt"), "caption")
    cfg = 1.0 if drop_prompt else 0.0
    if "codes" in record:
        codes = load_codes(record["codes"], record.get("codes_row"))
        return processor.t2i_sample(caption, codes=codes, cfg_dropout=cfg)
    if "image" not in record:
        raise BadRecord("text-to-image record has neither codes nor image")
    pixels = processor.generation_pixels(load_rgb(record["image"]))
    return processor.t2i_sample(caption, pixels=pixels, cfg_dropout=cfg)


def to_sample(task: str, processor: JanusProcessor, record: dict[str, Any], drop_prompt: bool = False) -> Sample:
    if task == "und":
        return und_sample(processor, record)
    if task == "text":
        return text_sample(processor, record)
    if task == "t2i":
        return t2i_sample(processor, record, drop_prompt)
    raise ValueError(f"unknown task {task!r}")

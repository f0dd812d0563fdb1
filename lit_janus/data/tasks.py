"""Raw records (formats in `sources.py`) to training `Sample`s, one function per task stream.

Every problem with a record raises (`BadRecord`, `PromptTooLongError`, or the OSError/ValueError of
an unreadable image): the stream decides whether to skip and count it or to stop (`strict`).
No answer is truncated: a conversation longer than the context keeps the leading turns that fit (cut at a
turn boundary; rejected if not even its first turn fits). A pure-text document longer than the context is
read one context-long window per epoch.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from lit_janus.batch import IGNORE, Sample
from lit_janus.data.sources import BadRecord, has_image
from lit_janus.processor import JanusProcessor, PromptTooLongError, load_rgb
from lit_janus.tokenizer import ASSISTANT, USER

# matched case-insensitively: Janus-1.3B's template says "User"/"Assistant", some exports "USER"
USER_ROLES = {"user", "human", USER.lower()}
ASSISTANT_ROLES = {"assistant", "gpt", ASSISTANT.lower()}
SYSTEM_ROLES = {"system"}
IMAGE_MARKER = re.compile(r"\s*(?:<image>|<image_placeholder>)\s*")  # LLaVA's and DeepSeek's, with their spacing


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
def turns_of(record: dict[str, Any], n_images: int) -> list[tuple[str, str]]:
    """(question, answer) pairs of an understanding record with `n_images` images, in order.

    Image markers (`<image>`, `<image_placeholder>`) are dropped from every question: the images
    always go before the first question (DeepSeek's template), so a marker left in the text would
    become a stray placeholder token (or literal text). Markers, when given, must name each image once,
    as in DeepSeek's and LLaVA's formats."""
    if "conversations" not in record:
        pairs = [(record.get("question"), record.get("answer"))]
    else:
        pairs = _pairs(record["conversations"])
    markers, turns = 0, []
    for i, (question, answer) in enumerate(pairs):
        what = "question" if len(pairs) == 1 else f"question {i + 1}"
        markers += len(IMAGE_MARKER.findall(_text(question, what)))
        turns.append((_text(IMAGE_MARKER.sub(" ", question).strip(), what),
                      _text(answer, "answer" if len(pairs) == 1 else f"answer {i + 1}")))
    if markers and markers != n_images:
        raise BadRecord(f"{markers} image marker(s) in the questions for {n_images} image(s)")
    return turns


def _pairs(conv: Any) -> list[tuple[Any, Any]]:
    """(question, answer) contents of a conversation's answered user turns. Turns before the first user
    turn are left out: a `system` turn (ShareGPT exports such as OpenHermes and SlimOrca start with one;
    the system prompt is the processor's) or an assistant greeting (LLaVA's loader skips those too)."""
    if not isinstance(conv, list) or not conv:
        raise BadRecord("conversations must be a non-empty list of turns")
    pairs, question = [], None
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise BadRecord(f"turn {i} is not an object")
        role = turn.get("role", turn.get("from"))
        key = role.lower() if isinstance(role, str) else None
        content = turn.get("content", turn.get("value"))
        if not pairs and question is None and key in SYSTEM_ROLES | ASSISTANT_ROLES:
            continue
        if key in USER_ROLES:
            if question is not None:
                raise BadRecord(f"turn {i}: two user turns in a row")
            question = _text(content, f"question (turn {i})")
        elif key in ASSISTANT_ROLES:
            if question is None:
                raise BadRecord(f"turn {i}: an assistant turn without a user turn before it")
            pairs.append((question, _text(content, f"answer (turn {i})")))
            question = None
        else:
            raise BadRecord(f"turn {i}: unsupported role {role!r} (user/assistant, and system before the first "
                            "user turn; the system prompt is the processor's)")
    if not pairs:
        raise BadRecord("conversation has no answered user turn")
    return pairs


def conversation_sample(processor: JanusProcessor, images: list, turns: list[tuple[str, str]]) -> Sample:
    """Understanding sample with every assistant turn supervised, in DeepSeek's multi-turn layout
    `... <|Assistant|>: A1<eos><|User|>: Q2\n\n<|Assistant|>: A2<eos>`. A conversation longer than the
    context keeps its leading turns that fit, cut at a turn boundary (`Sample.turns_cut` counts the
    turns left out; an answer is never truncated); raises PromptTooLongError if not even the first turn
    fits. Without images it is a text-only chat in the same template (system prompt included), a `text`
    sample supervised on its answers."""
    ids: list[int] = []
    labels: list[int] = []

    def add_turn(prompt: list[int], answer: str) -> None:
        reply = processor.encode(" " + answer) + [processor.eos_id]
        # the last prompt position predicts the first answer token; <eos> predicts nothing
        labels.extend([IGNORE] * (len(prompt) - 1) + reply + [IGNORE])
        ids.extend(prompt + reply)

    if images:
        first = processor.understanding_sample(images, *turns[0])  # pixels, and the checks of one turn
        if len(turns) == 1:
            return first
        ids.extend(first.input_ids.tolist())
        labels.extend(first.text_labels.tolist())
        pixels = first.pixel_values
    else:
        add_turn(processor.understanding_ids(turns[0][0], n_images=0), turns[0][1])
        pixels = None
    if len(ids) > processor.max_length:
        raise PromptTooLongError(f"the first turn of this conversation is {len(ids)} tokens; the context is "
                                 f"{processor.max_length}")
    kept = 1
    for question, answer in turns[1:]:
        end = len(ids)
        add_turn(processor.encode(f"{USER}: {question}\n\n{ASSISTANT}:"), answer)
        if len(ids) > processor.max_length:  # this turn and the rest do not fit: end before it
            del ids[end:], labels[end:]
            break
        kept += 1
    processor.check_image_slots(ids, len(images))  # a placeholder token in a later turn or an answer
    t = torch.tensor(ids)
    return Sample(
        input_ids=t, text_labels=torch.tensor(labels), gen_labels=torch.full_like(t, IGNORE),
        gen_mask=torch.zeros_like(t, dtype=torch.bool), image_mask=t == processor.image_id,
        task="und" if images else "text", pixel_values=pixels, turns_cut=len(turns) - kept,
    )


def und_sample(processor: JanusProcessor, record: dict[str, Any]) -> Sample:
    images = record.get("images", record.get("image"))
    if images is None or images == "":
        raise BadRecord("understanding record has no image (a text-only conversation is text data: list the "
                        "manifest in both streams, `has_image: true` on the und source, `false` on the text one)")
    images = images if isinstance(images, list) else [images]
    if not images:
        raise BadRecord("understanding record has an empty image list")
    turns = turns_of(record, len(images))  # validate the text before paying for image decoding
    return conversation_sample(processor, [load_rgb(im) for im in images], turns)


# ---- text -----------------------------------------------------------------------------------
def text_sample(processor: JanusProcessor, record: dict[str, Any], epoch: int = 0) -> Sample:
    """`{"text"}`: a document, all of it supervised; one longer than the context gives one window of it per
    epoch (`JanusProcessor.text_sample`). A conversation without images (`conversations`, or `question` +
    `answer`: ShareGPT-style dialogue, the text-only part of LLaVA's mix): the chat template, answers only."""
    if "text" not in record and ("conversations" in record or "question" in record):
        if has_image(record):
            raise BadRecord("a conversation with an image is understanding data, not text (with one manifest "
                            "for both streams, set `has_image: false` on its text-stream source)")
        return conversation_sample(processor, [], turns_of(record, 0))
    return processor.text_sample(_text(_field(record, "text"), "text"), window=epoch)


# ---- text-to-image --------------------------------------------------------------------------
_CODE_ARRAYS: dict[str, np.ndarray] = {}  # per process: memory-mapped [N, tokens] code arrays


def load_codes(value: Any, row: Any = None) -> torch.Tensor:
    """VQ codes from a list, a `.npy` file, or row `row` of a `.npy` array of shape [N, tokens].
    Raises BadRecord for anything but non-negative integer codes (a bad code would otherwise surface
    as a device-side assert on the GPU); the upper bound is the model's to check (JanusPro.forward)."""
    if isinstance(value, list):
        try:
            codes = np.asarray(value)
        except ValueError:  # ragged nesting
            raise BadRecord("codes must be a flat list of integers") from None
        where = "codes"
    elif isinstance(value, str):
        if row is None:
            codes, where = np.load(value), value
        else:
            if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
                raise BadRecord(f"codes_row must be an integer, not {row!r}")
            if value not in _CODE_ARRAYS:
                _CODE_ARRAYS[value] = np.load(value, mmap_mode="r")
            table = _CODE_ARRAYS[value]
            if table.ndim != 2 or not 0 <= row < len(table):  # (numpy would wrap a negative row)
                raise BadRecord(f"codes_row {row} is not a row of {value} (shape {table.shape})")
            codes, where = table[row], f"row {row} of {value}"
            if codes.size and codes.min() < 0:  # rows the extractor could not fill stay -1
                raise BadRecord(f"{where} holds no codes (the extractor could not read its image)")
    else:
        raise BadRecord(f"codes must be a list or a .npy path, not {type(value).__name__}")
    if codes.dtype.kind not in "iu":
        raise BadRecord(f"{where}: codes must be integers, got {codes.dtype} values")
    if codes.size and codes.min() < 0:
        raise BadRecord(f"{where}: negative VQ code {codes.min()}")
    return torch.from_numpy(codes.astype(np.int64)).flatten()


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


def to_sample(task: str, processor: JanusProcessor, record: dict[str, Any], drop_prompt: bool = False,
              epoch: int = 0) -> Sample:
    if task == "und":
        return und_sample(processor, record)
    if task == "text":
        return text_sample(processor, record, epoch)
    if task == "t2i":
        return t2i_sample(processor, record, drop_prompt)
    raise ValueError(f"unknown task {task!r}")

"""ShapesWorld's LLM tokenizer: a small byte-level BPE with Janus-Pro's special tokens and chat roles.

The same kind of tokenizer as DeepSeek's (`lit_janus.tokenizer.build_tokenizer`), trained on text
that ShapesWorld's own generators emit, so every prompt, question, answer and sentence of the world
is a few tokens long. Deterministic: the corpus is a fixed seeded draw.
"""

from __future__ import annotations

import functools
import random

VOCAB_SIZE = 1024  # the `shapes` model preset's vocabulary


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Text from every ShapesWorld generator (no images are rendered)."""
    from lit_janus.shapes.world import (
        CATEGORIES, CLASS_NAMES, make_qa, make_sentence, make_t2i, random_scene, vocabulary,
    )

    rng = random.Random(seed)
    texts = [" ".join(vocabulary()), *CLASS_NAMES]
    for i in range(n):
        texts.append(make_t2i(CATEGORIES[i % len(CATEGORIES)], rng)[0])
        question, answer, _ = make_qa(random_scene(rng), rng)
        texts += [question, answer, make_sentence(rng)]
    return texts


@functools.lru_cache(maxsize=1)
def shapes_tokenizer():
    """The tokenizer every ShapesWorld config uses (`tokenizer: shapes`)."""
    from lit_janus.tokenizer import build_tokenizer

    return build_tokenizer(corpus(), vocab_size=VOCAB_SIZE)

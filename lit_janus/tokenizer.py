"""Janus-Pro's special tokens, and a builder for small byte-level BPE tokenizers that carry them.

Real checkpoints ship DeepSeek's tokenizer (byte-level BPE, 102400 ids). Tests and ShapesWorld
train a small tokenizer of the same kind with `tokenizers`, so the processor, the chat format and
every id lookup run exactly as they do for the real one. Ids are never hard-coded anywhere: the
1B and 7B tokenizers put the same strings at different ids.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"  # DeepSeek's pad (full-width bars, U+2581), not tokenizer.pad_token
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI]

# DeepSeek's "deepseek" conversation template (Janus-Pro roles use ASCII pipes).
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, special_tokens_last: bool = True):
    """Train a byte-level BPE tokenizer on `corpus` and return a `PreTrainedTokenizerFast` with
    Janus-Pro's special tokens and chat roles. Deterministic for a given corpus.

    `special_tokens_last` puts the specials after the merges (as in DeepSeek's tokenizers, where they
    sit at 100000+); tests build both orders to prove nothing depends on the ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) + [DEFAULT_SYSTEM_PROMPT, f"{USER}: \n\n{ASSISTANT}:"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    n_special = len(SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - (n_special if special_tokens_last else 0),
        special_tokens=[] if special_tokens_last else SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if special_tokens_last:
        tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    return fast


def special_token_id(tokenizer, token: str) -> int:
    """The id of a special token, with an error that names the tokenizer when it lacks it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if tid is None or (unk is not None and tid == unk and token != tokenizer.unk_token):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} has no {token!r} "
            "token; Janus-Pro needs " + ", ".join(SPECIAL_TOKENS)
        )
    return int(tid)

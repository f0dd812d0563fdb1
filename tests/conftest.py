"""Shared fixtures: a tiny tokenizer, processor, model and checkpoint directory, built in-process."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (deepseek_reference, ...)

CORPUS = [
    "a photo of a red circle", "a photo of two blue squares", "what colour is the square?",
    "how many circles are there?", "the triangle is left of the circle.", "yes", "no", "green", "three",
]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Caches (the tar-shard index) go to a temporary directory, not the user's ~/.cache."""
    import os

    before = os.environ.get("LIT_JANUS_CACHE")
    os.environ["LIT_JANUS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["LIT_JANUS_CACHE"]
    else:
        os.environ["LIT_JANUS_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes gain nothing from intra-op threads, and on a busy CI runner OpenMP's spinning
    threads make each tiny matmul milliseconds instead of microseconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lit_janus.tokenizer import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=320)


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer):
    from lit_janus.config import Config
    from lit_janus.tokenizer import IMAGE

    return Config.from_name("tiny", vocab_size=len(tiny_tokenizer),
                            image_token_id=tiny_tokenizer.convert_tokens_to_ids(IMAGE))


@pytest.fixture(scope="session")
def tiny_processor(tiny_tokenizer, tiny_config):
    from lit_janus.processor import ImageSettings, JanusProcessor

    return JanusProcessor(tiny_tokenizer, num_image_tokens=tiny_config.num_image_tokens,
                          image=ImageSettings(image_size=tiny_config.image_size), max_length=512)


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    from lit_janus.checkpoint import build_model

    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, tiny_model, tiny_processor):
    """The tiny model saved in transformers' layout (what `lit_janus.convert` writes)."""
    from lit_janus.checkpoint import save_transformers

    return save_transformers(tiny_model, tiny_processor, tmp_path_factory.mktemp("ckpt") / "tiny-hf")

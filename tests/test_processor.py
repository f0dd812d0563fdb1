import pytest
import torch
from PIL import Image

from lit_janus.batch import IGNORE
from lit_janus.processor import (
    ImageSettings, JanusProcessor, PromptTooLongError, generation_pixels, understanding_pixels,
)
from lit_janus.tokenizer import BOI, EOI, IMAGE, PAD, build_tokenizer


def test_special_ids_come_from_the_tokenizer():
    """Two tokenizers with the same strings at different ids (like Janus-Pro 1B vs 7B)."""
    corpus = ["a red circle", "two squares"]
    last = JanusProcessor(build_tokenizer(corpus, 300, special_tokens_last=True), num_image_tokens=4)
    first = JanusProcessor(build_tokenizer(corpus, 300, special_tokens_last=False), num_image_tokens=4)
    for p in (last, first):
        tok = p.tokenizer
        assert p.pad_id == tok.convert_tokens_to_ids(PAD) and p.image_id == tok.convert_tokens_to_ids(IMAGE)
        assert p.boi_id == tok.convert_tokens_to_ids(BOI) and p.eoi_id == tok.convert_tokens_to_ids(EOI)
    assert last.pad_id != first.pad_id and last.boi_id != first.boi_id


def test_tokenizer_without_janus_tokens_is_rejected():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<s>": 1, "</s>": 2}, unk_token="a")),
                                  bos_token="<s>", eos_token="</s>")
    with pytest.raises(ValueError, match="no '<｜▁pad▁｜>' token"):
        JanusProcessor(tok)


def test_chat_formats(tiny_processor):
    p = tiny_processor
    assert p.chat_prompt("hi") == "<|User|>: hi\n\n<|Assistant|>:"
    ids = p.t2i_prompt_ids("a red circle")
    assert ids[0] == p.bos_id and ids[-1] == p.boi_id
    assert p.tokenizer.decode(ids[1:-1]) == "<|User|>: a red circle\n\n<|Assistant|>:"  # no system prompt
    und = p.understanding_ids("what colour?")
    text = p.tokenizer.decode([i for i in und if i != p.image_id])
    assert text.startswith(p.tokenizer.bos_token + p.system_prompt + "\n\n<|User|>: ")
    assert text.endswith("<end_of_image>\nwhat colour?\n\n<|Assistant|>:")
    # one run of boi + 576 (here: num_image_tokens) placeholders + eoi
    i = und.index(p.boi_id)
    assert und[i + 1 : i + 1 + p.num_image_tokens] == [p.image_id] * p.num_image_tokens
    assert und[i + 1 + p.num_image_tokens] == p.eoi_id


def test_unconditional_row(tiny_processor):
    p = tiny_processor
    ids = p.t2i_prompt_ids("a photo of two blue squares")
    un = p.unconditional_ids(ids)
    assert un[0] == ids[0] and un[-1] == p.boi_id and set(un[1:-1]) == {p.pad_id} and len(un) == len(ids)
    assert torch.equal(p.unconditional_ids(torch.tensor([ids]))[0], torch.tensor(un))


def test_bad_prompts(tiny_processor):
    p = tiny_processor
    with pytest.raises(ValueError, match="empty prompt"):
        p.t2i_prompt_ids("   ")
    with pytest.raises(PromptTooLongError, match="shorten it"):
        p.t2i_prompt_ids("red " * 1000)
    with pytest.raises(PromptTooLongError):
        p.understanding_sample(Image.new("RGB", (8, 8)), "what?", "yes " * 1000)


def test_understanding_preprocessing_odd_sizes():
    """Long side to 384, centre-padded with grey 127 (normalised to -1/255), mean/std 0.5."""
    s = ImageSettings()
    wide = Image.new("RGB", (500, 123), (255, 0, 0))
    x = understanding_pixels(wide, s)
    assert x.shape == (3, 384, 384)
    grey = (127 / 255 - 0.5) / 0.5
    content_h = int(123 / 500 * 384)  # 94
    top = (384 - content_h) // 2
    assert torch.allclose(x[:, :top], torch.full_like(x[:, :top], grey))
    assert torch.allclose(x[:, top + content_h :], torch.full_like(x[:, top + content_h :], grey))
    assert torch.allclose(x[:, top + 2 : top + content_h - 2, 10], torch.tensor([1.0, -1.0, -1.0]).view(3, 1), atol=1e-3)
    tall = understanding_pixels(Image.new("RGB", (3, 900), (0, 0, 255)), s)  # min side clamps to 14
    assert tall.shape == (3, 384, 384)
    left = (384 - 14) // 2
    assert torch.allclose(tall[:, :, : left], torch.full_like(tall[:, :, :left], grey))


def test_generation_preprocessing_crops_centre():
    img = Image.new("RGB", (600, 300), (0, 0, 0))
    img.paste((255, 255, 255), (150, 0, 450, 300))  # white centre square, black sides
    x = generation_pixels(img, 64)
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert x[:, :, 2:-2].min() > 0.99  # only the white centre survives the crop


def test_missing_and_corrupt_images(tmp_path, tiny_processor):
    with pytest.raises(FileNotFoundError, match="image not found"):
        tiny_processor.understanding_pixels(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        tiny_processor.generation_pixels(bad)


def test_sample_labels(tiny_processor):
    p = tiny_processor
    s = p.understanding_sample(Image.new("RGB", (20, 30)), "what colour?", "green")
    answer = p.encode(" green") + [p.eos_id]
    sup = (s.text_labels != IGNORE).nonzero().flatten().tolist()
    # supervised positions are the ones *predicting* the answer: last prompt token .. second-to-last answer token
    assert [int(s.text_labels[i]) for i in sup] == answer
    assert sup == list(range(len(s) - len(answer) - 1, len(s) - 1))
    assert s.image_mask.sum() == p.num_image_tokens and s.pixel_values.shape == (1, 3, 32, 32)

    codes = torch.arange(p.num_image_tokens)
    t = p.t2i_sample("a red circle", codes)
    P = len(p.t2i_prompt_ids("a red circle"))
    assert len(t) == P + p.num_image_tokens - 1
    assert int(t.input_ids[P - 1]) == p.boi_id and int(t.gen_labels[P - 1]) == 0  # <boi> predicts code0
    assert torch.equal(t.gen_labels[P - 1 :], codes) and (t.gen_labels[: P - 1] == IGNORE).all()
    assert torch.equal(t.input_ids[t.gen_mask], codes[:-1])
    assert (t.text_labels == IGNORE).all()

    txt = p.text_sample("the triangle is left of the circle.")
    assert torch.equal(txt.text_labels[:-1], txt.input_ids[1:]) and int(txt.text_labels[-1]) == IGNORE


def test_a_text_document_longer_than_the_context_is_read_a_window_per_epoch(tiny_processor):
    """Pretraining text is mostly longer than the context; such documents were skipped as too long."""
    from lit_janus.data.tasks import to_sample

    p = tiny_processor
    doc = " ".join(["the triangle is left of the circle."] * 200)
    ids = [p.bos_id] + p.encode(doc) + [p.eos_id]
    L = p.max_length
    n = -(-(len(ids) - 1) // (L - 1))  # windows of L overlapping by one token
    assert n >= 3
    windows = [to_sample("text", p, {"text": doc}, epoch=e) for e in range(n + 1)]
    assert [len(w) for w in windows[:n - 1]] == [L] * (n - 1) and 2 <= len(windows[n - 1]) <= L
    # the epochs cover the document, and every token after <bos> is a target exactly once
    targets = sum((w.text_labels[w.text_labels != IGNORE].tolist() for w in windows[:n]), [])
    assert targets == ids[1:]
    assert torch.equal(windows[n].input_ids, windows[0].input_ids)  # then start over
    for w in windows:
        assert torch.equal(w.text_labels[:-1], w.input_ids[1:]) and int(w.text_labels[-1]) == IGNORE
    # one token over the context: the second window still has a target (it was a lone <eos> with none)
    short = [p.bos_id] + p.encode(doc)
    k = next(i for i in range(len(short)) if len(p.encode(p.tokenizer.decode(short[1:i]))) + 2 == L + 1)
    text = p.tokenizer.decode(short[1:k])
    assert len([p.bos_id] + p.encode(text) + [p.eos_id]) == L + 1
    tail = to_sample("text", p, {"text": text}, epoch=1)
    assert len(tail) == 2 and int((tail.text_labels != IGNORE).sum()) == 1


def test_image_slots_must_match_the_images(tiny_processor):
    """The model fills placeholder positions with image features: a stray marker in the text (the
    processor places the images itself) or a missing image is an error here, not in the training step."""
    p, img = tiny_processor, Image.new("RGB", (8, 8))
    assert p.understanding_ids("what?", 2).count(p.image_id) == 2 * p.num_image_tokens
    with pytest.raises(ValueError, match=r"1 image\(s\) need 16 <image_placeholder> positions but the sequence has 32"):
        p.understanding_ids("<image_placeholder>\nwhat?")  # DeepSeek's marker would make a second image block
    with pytest.raises(ValueError, match="need 0 .* has 1"):
        p.understanding_ids("<image_placeholder>what?", 0)  # a text-only question
    with pytest.raises(ValueError, match="has 17"):
        p.understanding_sample(img, "what?", "this <image_placeholder>")
    with pytest.raises(ValueError, match="at least one image"):
        p.understanding_sample([], "what?", "green")

"""Data pipeline: record formats, bad-record handling, exact task ratios, CFG dropout, packing,
class folders, ShapesWorld and litdata sources (lit_janus.data)."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lit_janus.batch import IGNORE, TASK_ID, Sample, collate, fill_codes, first_fit
from lit_janus.data import (
    BadSampleError, ClassFolderSource, JsonlSource, ShapesSource, StreamingSource, TaskRatio, TaskStream, merge,
    task_batch_sizes,
)
from lit_janus.data.sources import BadRecord
from lit_janus.data.tasks import to_sample


# ---- helpers -------------------------------------------------------------------------------
def write_image(path, value=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def write_jsonl(path, records, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def text_of(processor, sample):
    return processor.tokenizer.decode(sample.input_ids.tolist())


def supervised_text(processor, sample):
    """The tokens `lm_head` is trained to produce, in order."""
    return processor.tokenizer.decode(sample.text_labels[sample.text_labels != IGNORE].tolist())


def manifests(tmp_path, n=6, tag=""):
    """und/text/t2i manifests whose records are identifiable by `tag` and the number in their text."""
    for i in range(n):
        write_image(tmp_path / "img" / f"{i}.png", value=(20 * i) % 256)
    und = write_jsonl(tmp_path / "und.jsonl", [{"image": f"img/{i}.png", "question": f"{tag}question {i}",
                                                  "answer": f"{tag}answer {i}"} for i in range(n)])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{tag}doc {i}"} for i in range(n)])
    t2i = write_jsonl(tmp_path / "t2i.jsonl", [{"codes": list(range(i % 48, i % 48 + 16)),
                                                 "caption": f"{tag}caption {i}"} for i in range(n)])
    return {"und": und, "text": text, "t2i": t2i}


# ---- record formats --------------------------------------------------------------------------
def test_every_record_format_parses(tmp_path, tiny_processor):
    p = tiny_processor
    write_image(tmp_path / "data" / "a.png")
    write_image(tmp_path / "data" / "b.png", value=200)
    np.save(tmp_path / "data" / "x.npy", np.arange(16, dtype=np.int16))
    np.save(tmp_path / "data" / "all.npy", np.arange(48, dtype=np.int16).reshape(3, 16))
    m = write_jsonl(tmp_path / "data" / "m.jsonl", [
        {"image": "a.png", "conversations": [{"role": "user", "content": "what colour?"},
                                             {"role": "assistant", "content": "green"}]},
        {"image": "a.png", "question": "what colour?", "answer": "green"},
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour?"},
                                             {"from": "gpt", "value": "green"}]},
        {"images": ["a.png", "b.png"], "question": "what colour?", "answer": "green"},
        {"text": "the triangle is left of the circle."},
        {"image": "a.png", "caption": "a red circle"},
        {"codes": "x.npy", "caption": "a red circle"},
        {"codes": list(range(16)), "prompt": "a red circle"},
        {"codes": "all.npy", "codes_row": 1, "caption": "a red circle"},
        {"image": ["a.png", "b.png"], "question": "what colour?", "answer": "green"},
        {"image": "a.png", "conversations": [{"role": "User", "content": "what colour?"},  # Janus-1.3B's roles
                                             {"role": "Assistant", "content": "green"}]},
        {"image": "a.png", "conversations": [{"role": "USER", "content": "what colour?"},
                                             {"role": "<|Assistant|>", "content": "green"}]},
    ], extra_lines=[""])  # blank lines are ignored
    src = JsonlSource(str(m))
    assert len(src) == 12 and src[0]["image"] == str(tmp_path / "data" / "a.png")  # relative to the manifest
    assert src[9]["image"] == [str(tmp_path / "data" / "a.png"), str(tmp_path / "data" / "b.png")]
    und = [to_sample("und", p, src[i]) for i in range(4)]
    for s in und[:3]:  # three spellings of one conversation give one sample
        assert torch.equal(s.input_ids, und[0].input_ids) and torch.equal(s.text_labels, und[0].text_labels)
        assert s.pixel_values.shape == (1, 3, 32, 32) and int(s.image_mask.sum()) == p.num_image_tokens
    assert supervised_text(p, und[0]) == " green" + p.tokenizer.eos_token
    assert und[3].pixel_values.shape[0] == 2 and int(und[3].image_mask.sum()) == 2 * p.num_image_tokens
    listed = to_sample("und", p, src[9])  # "image": [...] is "images": [...]
    assert torch.equal(listed.input_ids, und[3].input_ids) and torch.equal(listed.pixel_values, und[3].pixel_values)
    for i in (10, 11):  # roles in any case
        s = to_sample("und", p, src[i])
        assert torch.equal(s.input_ids, und[0].input_ids) and torch.equal(s.text_labels, und[0].text_labels)
    text = to_sample("text", p, src[4])
    assert text.task == "text" and text_of(p, text).endswith("circle." + p.tokenizer.eos_token)
    pix = to_sample("t2i", p, src[5])
    assert pix.gen_pixels.shape == (3, 32, 32) and -1 <= pix.gen_pixels.min() and pix.gen_pixels.max() <= 1
    for i, expected in ((6, range(16)), (7, range(16)), (8, range(16, 32))):
        s = to_sample("t2i", p, src[i])
        assert s.gen_pixels is None and s.gen_labels[s.gen_labels != IGNORE].tolist() == list(expected)
        assert torch.equal(s.input_ids[: len(s) - 15], pix.input_ids[: len(s) - 15])  # same prompt layout


def test_a_json_array_manifest_reads_like_jsonl(tmp_path, tiny_processor):
    """LLaVA's llava_v1_5_mix665k.json and ShareGPT4V's caption files are one JSON array (indented or not),
    their image paths relative to an image folder (`root`), with text-only conversations among them."""
    write_image(tmp_path / "images" / "coco" / "a.png")
    records = [
        {"id": "1", "image": "coco/a.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour?"},
                                                               {"from": "gpt", "value": "green"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yes"}]},
        {"id": "3", "image": "coco/a.png", "conversations": [{"from": "human", "value": "how many?\n<image>"},
                                                               {"from": "gpt", "value": "three ü"}]},
    ]
    (tmp_path / "mix.json").write_text("\ufeff" + json.dumps(records, indent=2, ensure_ascii=False))
    src = JsonlSource(str(tmp_path / "mix.json"), root=str(tmp_path / "images"))
    assert len(src) == 3 and src[0]["image"] == str(tmp_path / "images" / "coco" / "a.png")
    assert src[2]["conversations"][1]["value"] == "three ü" and src[1]["id"] == "2"
    jsonl = JsonlSource(str(write_jsonl(tmp_path / "mix.jsonl", records)), root=str(tmp_path / "images"))
    for i in (0, 2):
        assert torch.equal(to_sample("und", tiny_processor, src[i]).input_ids,
                           to_sample("und", tiny_processor, jsonl[i]).input_ids)
    with pytest.raises(BadRecord, match="understanding record has no image"):  # text-only: the text stream's (has_image)
        to_sample("und", tiny_processor, src[1])
    (tmp_path / "broken.json").write_text('[{"image": "a.png"}, {"ima')
    with pytest.raises(ValueError, match="starts like a JSON array but does not parse"):
        len(JsonlSource(str(tmp_path / "broken.json")))


def write_shard(path, samples):
    """A WebDataset shard as img2dataset writes one: members KEY.jpg / KEY.txt / KEY.json, in key order."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def png_bytes(value, fmt="PNG"):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_webdataset_shards_read_by_index(tmp_path, tiny_processor):
    """img2dataset's output: tar shards of KEY.jpg + KEY.txt + KEY.json, failed downloads as json alone."""
    from lit_janus.data import WebDatasetSource

    write_shard(tmp_path / "laion" / "00000.tar", [
        ("000000000", {"jpg": png_bytes(10, "JPEG"), "txt": b"a red apple ", "json": b'{"caption": "ignored"}'}),
        ("000000001", {"json": b'{"status": "failed_to_download"}'}),  # no image: not a sample
        ("000000002", {"png": png_bytes(200), "json": '{"caption": "a blue sky \u00fc"}'.encode()}),
    ])
    write_shard(tmp_path / "laion" / "00001.tar", [
        ("sub/000010000", {"webp": png_bytes(50, "WEBP"), "txt": b"two cats"}),
        ("000010001", {"jpg": b"not an image", "txt": b"broken"}),
        ("000010002", {"jpg": png_bytes(90, "JPEG")}),  # no caption
    ])
    src = WebDatasetSource(str(tmp_path / "laion" / "{00000..00001}.tar"))
    assert len(src) == 5 and [src[i]["caption"] for i in range(3)] == ["a red apple", "a blue sky ü", "two cats"]
    assert src[2]["key"] == "sub/000010000" and "00001.tar, sample sub/000010000.webp" in src.locate(2)
    t2i = to_sample("t2i", tiny_processor, src[1])
    assert t2i.gen_pixels.shape == (3, 32, 32) and t2i.gen_pixels.mean() > 0.5  # the light (200) image
    with pytest.raises(ValueError, match="cannot read image"):
        to_sample("t2i", tiny_processor, src[3])
    with pytest.raises(BadRecord, match="no caption"):
        src[4]
    # the same shards by directory and by glob; captions as understanding data
    assert len(WebDatasetSource(str(tmp_path / "laion"))) == len(WebDatasetSource(str(tmp_path / "laion/*.tar"))) == 5
    und = WebDatasetSource([str(tmp_path / "laion/00000.tar")], question="Describe this image.")
    assert supervised_text(tiny_processor, to_sample("und", tiny_processor, und[0])).startswith(" a red apple")
    # a stream over them: every sample once per epoch, the broken ones replaced and counted
    stream = TaskStream("t2i", [src], tiny_processor, 5, seed=0)
    batch = stream.batch_at(0)
    assert len(batch.samples) == 5 and batch.skipped >= 2
    with pytest.raises(FileNotFoundError, match="no tar shards found"):
        WebDatasetSource(str(tmp_path / "missing" / "*.tar"))
    # `python -m lit_janus.data.optimize SHARDS OUT` stores them for streaming, image bytes as they are
    from lit_janus.data.optimize import item, open_source

    assert isinstance(open_source(str(tmp_path / "laion")), WebDatasetSource)
    stored = item(0, src)
    assert json.loads(stored["record"])["caption"] == "a red apple" and stored["image"] == src[0]["image"]
    assert item(3, src) is None  # an image that does not decode is left out
    import gzip

    (tmp_path / "gz.tar").write_bytes(gzip.compress((tmp_path / "laion" / "00000.tar").read_bytes()))
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        len(WebDatasetSource(str(tmp_path / "gz.tar")))


def test_webdataset_index_is_cached_per_shard(tmp_path, monkeypatch):
    """A restart (every rank, every requeue) reads each shard's index from the cache, not the tar headers;
    a rewritten shard is scanned again."""
    import os

    from lit_janus.data import tar_shards
    from lit_janus.data.tar_shards import WebDatasetSource

    monkeypatch.setenv("LIT_JANUS_CACHE", str(tmp_path / "cache"))
    a = write_shard(tmp_path / "d" / "a.tar", [("k0", {"jpg": b"x", "txt": b"zero"}), ("k1", {"png": b"y", "txt": b"one"})])
    write_shard(tmp_path / "d" / "b.tar", [("longer_key_2", {"webp": b"z", "json": b'{"caption": "two"}'})])
    first = WebDatasetSource(str(tmp_path / "d"))
    assert [first[i]["caption"] for i in range(3)] == ["zero", "one", "two"]
    assert len(list((tmp_path / "cache" / "tar_index").glob("*.npz"))) == 2

    scanned = []
    scan = tar_shards._scan
    monkeypatch.setattr(tar_shards, "_scan", lambda path: scanned.append(path.name) or scan(path))
    again = WebDatasetSource(str(tmp_path / "d"))
    assert [again[i]["key"] for i in range(3)] == ["k0", "k1", "longer_key_2"] and scanned == []
    assert again.locate(2).endswith("b.tar, sample longer_key_2.webp") and again[1]["image"] == b"y"
    for f in (tmp_path / "cache" / "tar_index").glob("*.npz"):  # a cache file cut short (a full disk): rescan
        f.write_bytes(f.read_bytes()[:60])
    assert len(WebDatasetSource(str(tmp_path / "d"))) == 3 and scanned == ["a.tar", "b.tar"]
    scanned.clear()
    write_shard(a, [("k0", {"jpg": b"x", "txt": b"zero"})])  # rewritten: one sample fewer
    os.utime(a, ns=(1, 1))  # a different mtime even where the filesystem's clock is coarse
    assert len(WebDatasetSource(str(tmp_path / "d"))) == 2 and scanned == ["a.tar"]
    assert len(WebDatasetSource(str(tmp_path / "d"), cache_index=False)) == 2 and scanned == ["a.tar", "a.tar", "b.tar"]
    # filled ahead of a run, in parallel: the next start scans nothing
    scanned.clear()
    monkeypatch.setenv("LIT_JANUS_CACHE", str(tmp_path / "cache2"))
    from lit_janus.data.tar_index import main as index_main

    assert index_main([str(tmp_path / "d" / "*.tar"), "--workers", "2"]) == 2
    assert len(WebDatasetSource(str(tmp_path / "d"))) == 2 and scanned == []
    # a cache that cannot be written costs a rescan, not the run
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LIT_JANUS_CACHE", str(tmp_path / "file"))
    assert len(WebDatasetSource(str(tmp_path / "d"))) == 2


def test_a_mixed_manifest_splits_between_the_und_and_text_streams(tmp_path, tiny_processor):
    """LLaVA's mix (and Janus-Pro's SFT data) holds text-only dialogue among the image conversations: with
    `has_image` one manifest feeds both streams, the dialogue trained in the chat template on its answers."""
    write_image(tmp_path / "images" / "a.png")
    p, eos = tiny_processor, tiny_processor.tokenizer.eos_token
    records = [
        {"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat colour?"},
                                                        {"from": "gpt", "value": "green"}]},
        {"id": "2", "conversations": [{"from": "human", "value": "how many?"}, {"from": "gpt", "value": "three"},
                                      {"from": "human", "value": "and circles?"}, {"from": "gpt", "value": "no"}]},
        {"id": "3", "question": "is it red?", "answer": "yes"},
        # ShareGPT exports: a system turn (the system prompt is the processor's), "image": "" for none
        {"id": "4", "image": "", "conversations": [{"from": "system", "value": "You are helpful."},
                                                   {"from": "human", "value": "hi"}, {"from": "gpt", "value": "no"}]},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(records))
    write_jsonl(tmp_path / "mix.jsonl", records, extra_lines=["{not json"])
    for name in ("mix.json", "mix.jsonl"):
        und = JsonlSource(str(tmp_path / name), root=str(tmp_path / "images"), has_image=True)
        text = JsonlSource(str(tmp_path / name), root=str(tmp_path / "images"), has_image=False)
        assert len(und) == 1 + (name == "mix.jsonl") and und[0]["id"] == "1" and [text[i]["id"] for i in range(3)] == ["2", "3", "4"]
        assert len(und) + len(text) == len(JsonlSource(str(tmp_path / name))) + (name == "mix.jsonl")  # bad line in both
        # messages name the record's line in the file (or its place in the array), not its index after filtering
        assert text.locate(2).endswith(f"{name}, {'line' if name == 'mix.jsonl' else 'record'} 4")
    chat = to_sample("text", p, text[0])
    assert chat.task == "text" and chat.pixel_values is None and not chat.image_mask.any()
    assert p.tokenizer.decode(chat.input_ids.tolist()).endswith(
        "how many?\n\n<|Assistant|>: three" + eos + "<|User|>: and circles?\n\n<|Assistant|>: no" + eos)
    assert supervised_text(p, chat) == f" three{eos} no{eos}"  # answers only, as in understanding
    single = to_sample("text", p, text[1])  # the first turn is an understanding prompt without an image
    prompt = p.understanding_ids("is it red?", n_images=0)
    assert single.input_ids.tolist()[:len(prompt)] == prompt and supervised_text(p, single) == f" yes{eos}"
    pos = (chat.text_labels != IGNORE).nonzero().flatten()
    assert torch.equal(chat.text_labels[pos], chat.input_ids[pos + 1])
    system = to_sample("text", p, text[2])
    assert torch.equal(system.input_ids, to_sample("text", p, {"question": "hi", "answer": "no"}).input_ids)
    with pytest.raises(BadRecord, match="has_image: true"):  # "" is no image, not the image folder
        to_sample("und", p, text[2])
    with pytest.raises(BadRecord, match="has_image: false"):  # an image conversation drawn by the text stream
        to_sample("text", p, JsonlSource(str(tmp_path / "mix.json"), root=str(tmp_path / "images"))[0])
    with pytest.raises(BadRecord, match="has_image: true"):
        to_sample("und", p, JsonlSource(str(tmp_path / "mix.json"))[1])
    # the streams: every record of its kind, none skipped
    batch = next(iter(TaskStream("text", [text], p, 3, shuffle=False)))
    assert batch.skipped == 0 and [s.task for s in batch.samples] == ["text", "text", "text"]
    packed = collate(batch.samples, p.pad_id, pack_length=p.max_length)  # packing keeps the answer-only labels
    assert int((packed["text_labels"] != IGNORE).sum()) == sum(int((s.text_labels != IGNORE).sum()) for s in batch.samples)
    # converting for streaming: `python -m lit_janus.data.optimize mix.json OUT --root images --has-image false`
    from lit_janus.data.optimize import open_source

    assert [r["id"] for r in open_source(str(tmp_path / "mix.json"), str(tmp_path / "images"), False)] == ["2", "3", "4"]
    with pytest.raises(ValueError, match="apply to a manifest"):
        open_source(str(tmp_path / "images"), has_image=True)


def test_multi_turn_supervises_every_answer_in_deepseek_layout(tiny_processor):
    p = tiny_processor
    record = {"image": Image.new("RGB", (30, 20)), "conversations": [
        {"role": "user", "content": "what colour?"}, {"role": "assistant", "content": "green"},
        {"role": "user", "content": "how many?"}, {"role": "assistant", "content": "three"},
        {"role": "user", "content": "unanswered"}]}
    s = to_sample("und", p, record)
    eos = p.tokenizer.eos_token
    text = p.tokenizer.decode([i for i in s.input_ids.tolist() if i != p.image_id])
    assert text.endswith("<end_of_image>\nwhat colour?\n\n<|Assistant|>: green" + eos
                         + "<|User|>: how many?\n\n<|Assistant|>: three" + eos)  # trailing user turn dropped
    assert supervised_text(p, s) == f" green{eos} three{eos}"
    # labels are stored shifted: each supervised position predicts the next input token
    pos = (s.text_labels != IGNORE).nonzero().flatten()
    assert torch.equal(s.text_labels[pos], s.input_ids[pos + 1])


# ---- bad records ---------------------------------------------------------------------------
BAD_RECORDS = {
    "missing image": {"image": "nope.png", "question": "q", "answer": "a"},
    "corrupt image": {"image": "corrupt.png", "question": "q", "answer": "a"},
    "empty answer": {"image": "ok.png", "question": "q", "answer": " "},
    "no image": {"question": "q", "answer": "a"},
    "too long": {"image": "ok.png", "question": "q " * 600, "answer": "a"},
    "assistant first": {"image": "ok.png", "conversations": [{"role": "assistant", "content": "a"}]},
    "empty image list": {"images": [], "question": "q", "answer": "a"},
    "more markers than images": {"image": "ok.png", "conversations": [
        {"role": "user", "content": "<image_placeholder>\nq"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "and <image_placeholder>?"}, {"role": "assistant", "content": "b"}]},
    "placeholder in an answer": {"image": "ok.png", "question": "q", "answer": "a <image_placeholder>"},
}


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_bad_und_records_are_skipped_and_counted_or_raise_when_strict(tmp_path, tiny_processor, kind):
    write_image(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = {"image": "ok.png", "question": "what colour?", "answer": "green"}
    src = JsonlSource(str(write_jsonl(tmp_path / "m.jsonl", [BAD_RECORDS[kind], good])))
    batch = next(iter(TaskStream("und", [src], tiny_processor, 1, shuffle=False)))  # position 0 is the bad one
    assert batch.skipped >= 1 and len(batch.samples) == 1
    assert supervised_text(tiny_processor, batch.samples[0]) == " green" + tiny_processor.tokenizer.eos_token
    with pytest.raises(BadSampleError, match="m.jsonl, line 1"):
        next(iter(TaskStream("und", [src], tiny_processor, 1, shuffle=False, strict=True)))


def test_bad_text_and_t2i_records(tmp_path, tiny_processor):
    src = JsonlSource(str(write_jsonl(tmp_path / "m.jsonl", [
        {"text": ""}, {"caption": "c", "codes": [1, 2]}, {"caption": "", "codes": list(range(16))},
        {"caption": "c", "image": "nope.png"}, {"caption": "c"}], extra_lines=["{not json"])))
    p = tiny_processor
    for i in range(len(src)):
        task = "text" if i == 0 else "t2i"
        with pytest.raises((ValueError, OSError)):
            to_sample(task, p, src[i])
    # a stream of nothing but bad records stops with a clear error instead of spinning forever
    with pytest.raises(BadSampleError, match="bad records in a row in the t2i stream"):
        next(iter(TaskStream("t2i", [src], p, 1)))


def test_bad_codes_are_bad_records_naming_the_field(tmp_path, tiny_processor):
    np.save(tmp_path / "all.npy", np.arange(48, dtype=np.int16).reshape(3, 16))
    np.save(tmp_path / "neg.npy", np.full(16, -3, dtype=np.int64))
    cases = {  # record -> what the error names
        "codes_row 3 is not a row of": {"codes": "all.npy", "codes_row": 3},
        "codes_row -1 is not a row of": {"codes": "all.npy", "codes_row": -1},
        "codes_row must be an integer": {"codes": "all.npy", "codes_row": "1"},
        "codes must be integers, got object": {"codes": [None] * 16},
        "codes must be integers, got float64": {"codes": [1.5] * 16},
        "codes must be a flat list": {"codes": [[1, 2], [3]]},
        "codes: negative VQ code -1": {"codes": [-1] * 16},
        "neg.npy: negative VQ code -3": {"codes": "neg.npy"},
        "expected 16 image codes, got 15": {"codes": list(range(15))},
    }
    records = [{**r, "caption": "a red circle"} for r in cases.values()]
    src = JsonlSource(str(write_jsonl(tmp_path / "m.jsonl", records)))
    for i, expected in enumerate(cases):
        with pytest.raises(ValueError, match=expected):
            to_sample("t2i", tiny_processor, src[i])
    # in a stream: skipped and counted, never a crash (they were TypeError / IndexError)
    with pytest.raises(BadSampleError, match="bad records in a row in the t2i stream"):
        next(iter(TaskStream("t2i", [src], tiny_processor, 1)))


def test_codes_outside_the_codebook_stop_the_step_with_a_clear_error(tiny_model, tiny_processor):
    p, size = tiny_processor, tiny_model.config.codebook_size
    codes = torch.arange(16)
    tiny_model.check_codes(collate([p.t2i_sample("a red circle", codes)], p.pad_id)["gen_labels"])  # in range
    codes[5] = size
    batch = collate([p.t2i_sample("a red circle", codes)], p.pad_id)
    with pytest.raises(ValueError, match=rf"VQ codes 0\.\.{size} in the batch, but the codebook has {size} codes"):
        tiny_model(batch)  # on CPU the training forward checks before embedding them


def test_image_markers_are_dropped_and_name_each_image_once(tiny_processor):
    p = tiny_processor
    img = Image.new("RGB", (20, 20))
    plain = to_sample("und", p, {"image": img, "question": "what colour?", "answer": "green"})
    for q in ("<image_placeholder>\nwhat colour?", "<image>\nwhat colour?", "what colour? <image>"):
        for record in ({"image": img, "question": q, "answer": "green"},
                       {"image": img, "conversations": [{"role": "user", "content": q},
                                                        {"role": "assistant", "content": "green"}]}):
            assert torch.equal(to_sample("und", p, record).input_ids, plain.input_ids), (q, record.keys())
    # DeepSeek places an image at each marker; here both images go first and the markers leave the text
    s = to_sample("und", p, {"images": [img, img], "conversations": [
        {"role": "user", "content": "<image_placeholder>\nwhat colour?"}, {"role": "assistant", "content": "green"},
        {"role": "user", "content": "and <image_placeholder> here?"}, {"role": "assistant", "content": "three"}]})
    assert s.pixel_values.shape[0] == 2 and int(s.image_mask.sum()) == 2 * p.num_image_tokens
    text = p.tokenizer.decode([i for i in s.input_ids.tolist() if i != p.image_id])
    assert text.count("<begin_of_image>") == 2 and text.endswith(
        "<end_of_image>\nwhat colour?\n\n<|Assistant|>: green" + p.tokenizer.eos_token
        + "<|User|>: and here?\n\n<|Assistant|>: three" + p.tokenizer.eos_token)


def test_a_long_conversation_is_cut_at_a_turn_boundary_and_no_answer_is_truncated(tmp_path, tiny_processor):
    """ShareGPT-style dialogues are often longer than the context: the leading turns that fit are kept
    (never part of an answer) and the turns left out are counted, through the stream to the batch."""
    from lit_janus.processor import PromptTooLongError

    p, img = tiny_processor, Image.new("RGB", (8, 8))
    long_answer = "three " * 400  # the tiny processor's context is 512
    with pytest.raises(PromptTooLongError):  # not even the first turn fits
        to_sample("und", p, {"image": img, "question": "q", "answer": long_answer})
    with pytest.raises(PromptTooLongError, match="first turn"):
        to_sample("text", p, {"conversations": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": long_answer}]})
    answers = [f"answer{i} " + "three " * 25 for i in range(6)]
    turns = [t for a in answers for t in ({"role": "user", "content": "how many?"}, {"role": "assistant", "content": a})]
    for task, record in (("und", {"image": img, "conversations": turns}), ("text", {"conversations": turns})):
        prefixes = [to_sample(task, p, {**record, "conversations": turns[:2 * k]}) for k in range(1, 7)]
        fit = sum(s.turns_cut == 0 for s in prefixes)  # the longest prefix of whole turns that fits
        assert 2 <= fit < 6 and all(s.turns_cut == 0 for s in prefixes[:fit])
        assert len(prefixes[fit - 1]) <= p.max_length < len(prefixes[fit - 1]) + 2 * len(p.encode(answers[fit]))
        cut = to_sample(task, p, record)
        assert cut.turns_cut == 6 - fit and len(cut) == len(prefixes[fit - 1])
        assert torch.equal(cut.input_ids, prefixes[fit - 1].input_ids)
        assert torch.equal(cut.text_labels, prefixes[fit - 1].text_labels)
        supervised = supervised_text(p, cut)  # every kept answer whole, with its <eos>
        assert supervised.count(p.tokenizer.eos_token) == fit and f"answer{fit - 1}" in supervised
        assert supervised.count("three") == 25 * fit and f"answer{fit}" not in supervised
    # the stream counts the turns left out; the merged batch carries them for `data/turns_cut_text`
    write_jsonl(tmp_path / "chat.jsonl", [{"conversations": turns}] * 3)
    batch = next(iter(TaskStream("text", [JsonlSource(str(tmp_path / "chat.jsonl"))], p, 2, shuffle=False)))
    assert batch.skipped == 0 and batch.turns_cut == 2 * cut.turns_cut > 0
    batch = pickle.loads(pickle.dumps(batch))  # DataLoader workers send it to the main process
    assert batch.turns_cut == 2 * cut.turns_cut
    merged = merge({"text": batch}, p.pad_id, pack_length=p.max_length)
    assert int(merged["turns_cut_text"]) == 2 * cut.turns_cut and int(merged["turns_cut_und"]) == 0


# ---- ratio arithmetic ----------------------------------------------------------------------
def test_task_batch_sizes():
    # Janus-Pro Stage I: 1:0:3 of 256 on 8 GPUs (one count per micro-batch of an optimizer step)
    assert task_batch_sizes(256, TaskRatio(1, 0, 3), world_size=8) == {"und": [8], "text": [0], "t2i": [24]}
    # 2 ranks x 2 accumulated micro-batches: 40 = 4 x (2 + 3 + 5)
    assert task_batch_sizes(40, {"und": 2, "text": 3, "t2i": 5}, world_size=2, accumulate_grad_batches=2) == \
        {"und": [2, 2], "text": [3, 3], "t2i": [5, 5]}
    assert task_batch_sizes(40, TaskRatio(0, 0, 1), world_size=2) == {"und": [0], "text": [0], "t2i": [20]}
    # Stage II at 512 does not split into whole samples: the error names batch sizes that do
    with pytest.raises(ValueError, match=r"12\.8 / 19\.2 / 32.*multiple of 80 \(e\.g\. 480 or 560\).*round_ratio"):
        task_batch_sizes(512, TaskRatio(2, 3, 5), world_size=8)
    assert task_batch_sizes(512, TaskRatio(2, 3, 5), world_size=8, round_ratio=True) == \
        {"und": [13], "text": [19], "t2i": [32]}
    # Stage III 5:1:4 of 128 on 1 GPU rounds to 64/13/51
    assert task_batch_sizes(128, TaskRatio(5, 1, 4), round_ratio=True) == {"und": [64], "text": [13], "t2i": [51]}
    with pytest.raises(ValueError, match="does not split over world_size 2 x accumulate_grad_batches 1"):
        task_batch_sizes(41, TaskRatio(), world_size=2)
    with pytest.raises(ValueError, match="global_batch_size must be >= 1"):
        task_batch_sizes(0, TaskRatio())
    with pytest.raises(ValueError, match="at least one positive"):
        task_batch_sizes(8, TaskRatio(0, 0, 0))
    with pytest.raises(ValueError, match="would get none"):
        task_batch_sizes(2, TaskRatio(1, 1, 8), round_ratio=True)


def test_the_ratio_holds_per_optimizer_step_under_gradient_accumulation():
    """The ratio splits each device's optimizer step, not each micro-batch. Rounding per micro-batch made
    2:3:5 of 20 samples on 2 ranks x 2 micro-batches 1/2/2 per micro-batch, 4:8:8 per step (t2i 40%, not 50%)."""
    sizes = task_batch_sizes(20, TaskRatio(2, 3, 5), world_size=2, accumulate_grad_batches=2)
    assert sizes == {"und": [1, 1], "text": [2, 1], "t2i": [2, 3]}  # exact per step, no rounding needed
    for accumulate in (1, 2, 4, 8):  # Stage II, 8 GPUs: 13/19/32 per device and step, however accumulated
        sizes = task_batch_sizes(512, TaskRatio(2, 3, 5), world_size=8, accumulate_grad_batches=accumulate,
                                 round_ratio=True)
        assert {t: sum(n) for t, n in sizes.items()} == {"und": 13, "text": 19, "t2i": 32}
        per_micro = [sum(n[i] for n in sizes.values()) for i in range(accumulate)]
        assert per_micro == [64 // accumulate] * accumulate  # micro-batches of one size ...
        assert all(max(n) - min(n) <= 1 for n in sizes.values())  # ... each task's share as even as it goes
    assert task_batch_sizes(512, TaskRatio(2, 3, 5), world_size=8, accumulate_grad_batches=4, round_ratio=True) == \
        {"und": [4, 3, 3, 3], "text": [4, 5, 5, 5], "t2i": [8, 8, 8, 8]}
    # the suggested batch sizes hold every task in every micro-batch, and round_ratio is offered only if it would
    with pytest.raises(ValueError, match=r"multiple of 20 \(e\.g\. 40\)\.$") as e:
        task_batch_sizes(28, TaskRatio(1, 1, 8), accumulate_grad_batches=4)
    assert "round_ratio" not in str(e.value)
    assert task_batch_sizes(40, TaskRatio(1, 1, 8), accumulate_grad_batches=4)["und"] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="too few for 4 micro-batches"):  # 20, a multiple of 20, is not enough
        task_batch_sizes(20, TaskRatio(1, 1, 8), accumulate_grad_batches=4)
    # 13 understanding samples cannot be in each of 16 micro-batches of 4
    with pytest.raises(ValueError, match="und 13: too few for 16 micro-batches.*fewer accumulate_grad_batches"):
        task_batch_sizes(512, TaskRatio(2, 3, 5), world_size=8, accumulate_grad_batches=16, round_ratio=True)


# ---- streams: exact ratio, rank disjointness, determinism ----------------------------------------
def _ids(processor, task_batch):
    return [text_of(processor, s) for s in task_batch.samples]


def test_every_step_on_every_rank_has_the_exact_ratio_and_ranks_are_disjoint(tmp_path, tiny_processor):
    m = manifests(tmp_path, n=60)
    p = tiny_processor
    sizes = task_batch_sizes(20, TaskRatio(2, 3, 5), world_size=2)  # 1 / 1.5 ... -> per device 10 = 2/3/5
    assert sizes == {"und": [2], "text": [3], "t2i": [5]}
    sizes = {t: n[0] for t, n in sizes.items()}
    seen = {t: [] for t in m}
    for rank in range(2):
        for task, path in m.items():
            it = iter(TaskStream(task, [JsonlSource(str(path))], p, sizes[task], rank=rank, world_size=2, seed=3))
            for _ in range(6):  # 6 steps x 2 ranks x 5 t2i = one epoch of 60 t2i records
                b = next(it)
                assert len(b.samples) == sizes[task] and b.skipped == 0 and all(s.task == task for s in b.samples)
                seen[task] += [(rank, x) for x in _ids(p, b)]
    for task, items in seen.items():
        by_rank = [{x for r, x in items if r == rank} for rank in range(2)]
        assert not by_rank[0] & by_rank[1], f"{task}: ranks drew the same record"
    t2i = [x for _, x in seen["t2i"]]
    assert len(set(t2i)) == 60  # one full epoch over both ranks: every record exactly once


def as_is(x):  # a module-level collate_fn: DataLoader workers started by spawn must pickle it
    return x


def test_stream_is_independent_of_workers_and_resumes_at_a_step(tmp_path, tiny_processor):
    from torch.utils.data import DataLoader

    path = manifests(tmp_path, n=10)["text"]
    p = tiny_processor

    def run(workers, start=0, steps=7):
        stream = TaskStream("text", [JsonlSource(str(path))], p, 3, seed=1, start_step=start)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=as_is)
        out = []
        for b in loader:
            out.append(_ids(p, b))
            if len(out) == steps:
                return out

    straight = run(0)
    assert run(2) == straight  # two worker processes interleave into the same sequence
    assert run(0, start=4, steps=3) == straight[4:]  # resuming at step 4 continues exactly
    bos, eos = p.tokenizer.bos_token, p.tokenizer.eos_token
    epoch0 = sorted(sum(straight[:3], []) + straight[3][:1])  # 10 records: 3 steps of 3 and one more
    assert epoch0 == sorted(f"{bos}doc {i}{eos}" for i in range(10))
    other_seed = TaskStream("text", [JsonlSource(str(path))], p, 3, seed=2)
    assert _ids(p, next(iter(other_seed))) != straight[0]


def test_several_sources_concatenate(tmp_path, tiny_processor):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(5)])
    s = TaskStream("text", [JsonlSource(str(a)), JsonlSource(str(b))], tiny_processor, 8)
    got = sorted(tiny_processor.decode(x.input_ids.tolist()) for x in next(iter(s)).samples)
    assert got == sorted([f"a{i}" for i in range(3)] + [f"b{i}" for i in range(5)])


def test_task_batches_cross_processes_as_a_few_tensors(tmp_path, tiny_processor):
    import pickle

    m = manifests(tmp_path, n=4)
    write_image(tmp_path / "img" / "t.png")
    t2i_pixels = JsonlSource(str(write_jsonl(tmp_path / "p.jsonl", [{"image": "img/t.png", "caption": "c"}])))
    for task, src in (("und", JsonlSource(str(m["und"]))), ("text", JsonlSource(str(m["text"]))),
                      ("t2i", JsonlSource(str(m["t2i"]))), ("t2i", t2i_pixels)):
        b = TaskStream(task, [src], tiny_processor, 3, cfg_dropout=0.5 if task == "t2i" else 0.0).batch_at(1)
        state = b.__getstate__()
        assert sum(isinstance(v, torch.Tensor) for v in state.values()) <= 7  # not ~6 per sample
        c = pickle.loads(pickle.dumps(b))
        assert (c.task, c.skipped, c.cfg_dropped, len(c.samples)) == (b.task, b.skipped, b.cfg_dropped, 3)
        for x, y in zip(b.samples, c.samples):
            for f in ("input_ids", "text_labels", "gen_labels", "gen_mask", "image_mask", "pixel_values", "gen_pixels"):
                u, v = getattr(x, f), getattr(y, f)
                assert (u is None and v is None) or torch.equal(u, v), f
            assert x.task == y.task


# ---- CFG dropout ----------------------------------------------------------------------------
def test_cfg_dropout_rate_layout_and_reproducibility(tmp_path, tiny_processor):
    p = tiny_processor
    captions = ["a photo of a red circle", "a photo of two blue squares", "three green triangles"]
    path = write_jsonl(tmp_path / "t.jsonl", [{"codes": [i % 64] * 16, "caption": captions[i % 3]} for i in range(400)])
    src = JsonlSource(str(path))
    stream = TaskStream("t2i", [src], p, 50, cfg_dropout=0.1, seed=7)
    batches = [stream.batch_at(t) for t in range(40)]  # 2000 samples, 5 epochs
    dropped = sum(b.cfg_dropped for b in batches)
    assert abs(dropped / 2000 - 0.1) < 0.02
    uncond = {tuple(p.unconditional_ids(p.t2i_prompt_ids(c))) for c in captions}
    cond = {tuple(p.t2i_prompt_ids(c)) for c in captions}
    n_uncond = 0
    for b in batches:
        for s in b.samples:
            prompt = tuple(s.input_ids[: len(s) - 15].tolist())  # prompt ends with <begin_of_image>
            assert prompt in cond or prompt in uncond
            n_uncond += prompt in uncond
            assert s.gen_labels[s.gen_labels != IGNORE].numel() == 16  # codes still supervised
    assert n_uncond == dropped
    # seeded per record and epoch: two ranks drawing the same 800 positions drop the same samples
    def dropped(rank):
        stream = TaskStream("t2i", [src], p, 25, cfg_dropout=0.1, seed=7, world_size=2, rank=rank)
        return sum(stream.batch_at(t).cfg_dropped for t in range(16))

    assert dropped(0) + dropped(1) == sum(b.cfg_dropped for b in batches[:16])


# ---- merge, packing, on-the-fly codes ------------------------------------------------------------
def test_merge_packs_documents_apart_and_counts_tasks(tmp_path, tiny_processor):
    p = tiny_processor
    m = manifests(tmp_path, n=6)
    sizes = {"und": 2, "text": 3, "t2i": 5}
    parts = {t: TaskStream(t, [JsonlSource(str(m[t]))], p, k).batch_at(0) for t, k in sizes.items()}
    samples = [s for t in ("und", "text", "t2i") for s in parts[t].samples]
    padded = merge(parts, p.pad_id)
    packed = merge(parts, p.pad_id, pack_length=256)
    assert padded["input_ids"].shape[0] == 10 and packed["input_ids"].shape[1] == 256
    assert packed["input_ids"].shape[0] < 10  # several documents share a row
    for b in (padded, packed):
        assert (int(b["samples_und"]), int(b["samples_text"]), int(b["samples_t2i"])) == (2, 3, 5)
        assert int(b["skipped_und"]) == int(b["skipped_t2i"]) == int(b["cfg_dropped"]) == 0
        assert int(b["num_tokens"]) == sum(len(s) for s in samples) == int((b["task_ids"] > 0).sum())
        assert b["pixel_values"].shape[0] == 2
    # in packed rows each document restarts its position ids and keeps its own tokens and labels
    docs = []
    for r in range(packed["input_ids"].shape[0]):
        pos, n = packed["position_ids"][r], int((packed["task_ids"][r] > 0).sum())
        starts = (pos[:n] == 0).nonzero().flatten().tolist() + [n]
        docs += [(packed["input_ids"][r, a:b], packed["text_labels"][r, a:b], packed["gen_labels"][r, a:b],
                  int(packed["task_ids"][r, a])) for a, b in zip(starts, starts[1:])]
    assert len(docs) == 10
    for s in samples:
        assert any(torch.equal(ids, s.input_ids) and torch.equal(tl, s.text_labels) and torch.equal(gl, s.gen_labels)
                   and task == TASK_ID[s.task] for ids, tl, gl, task in docs)


def test_first_fit_matches_the_plain_scan_over_every_row():
    import random

    def plain(lengths, pack):  # first fit over all rows, the definition
        rows, room = [], []
        for i, n in enumerate(lengths):
            j = next((j for j, free in enumerate(room) if n <= free), None)
            if j is None:
                rows.append([]), room.append(pack)
                j = len(rows) - 1
            rows[j].append(i)
            room[j] -= n
        return rows

    rng = random.Random(0)
    for _ in range(300):
        pack = rng.choice([16, 64, 256])
        lengths = [rng.randint(1, pack) for _ in range(rng.randint(1, 80))]
        assert first_fit(lengths, pack) == plain(lengths, pack)


def _sample(n, task, start=0):
    ids = torch.arange(start, start + n)
    return Sample(ids, ids + 1000, torch.full((n,), IGNORE) if task != "t2i" else ids % 7, ids % 3 == 0 if task == "t2i"
                  else torch.zeros(n, dtype=torch.bool), ids % 5 == 0 if task == "und" else torch.zeros(n, dtype=torch.bool),
                  task)


def test_collate_positions_pads_and_row_order():
    samples = [_sample(5, "und"), _sample(7, "text", 100), _sample(4, "t2i", 200), _sample(3, "text", 300)]
    packed = collate(samples, pad_id=-1, pack_length=10)
    # first fit: [5, 4] (room 1), [7, 3]
    assert packed["input_ids"].tolist() == [[0, 1, 2, 3, 4, 200, 201, 202, 203, -1],
                                            [100, 101, 102, 103, 104, 105, 106, 300, 301, 302]]
    # positions restart per document; the pad continues the row's last document
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]]
    assert packed["task_ids"].tolist() == [[1] * 5 + [3] * 4 + [0], [2] * 10]
    assert packed["text_labels"][0, :5].tolist() == [1000, 1001, 1002, 1003, 1004] and packed["text_labels"][0, 9] == IGNORE
    assert packed["gen_mask"][0].tolist() == [False] * 5 + [False, True, False, False, False]
    padded = collate(samples, pad_id=-1)  # one sample per row, right-padded to the longest
    assert padded["input_ids"].shape == (4, 7) and padded["input_ids"][2].tolist() == [200, 201, 202, 203, -1, -1, -1]
    assert padded["position_ids"][2].tolist() == list(range(7)) and padded["gen_labels"].dtype == torch.long
    with pytest.raises(ValueError, match="does not fit pack_length=6"):
        collate(samples, pad_id=-1, pack_length=6)


def test_t2i_images_are_encoded_on_the_fly(tmp_path, tiny_processor):
    p = tiny_processor
    for i in range(3):
        write_image(tmp_path / f"{i}.png", value=60 * i, size=(50, 32))
    path = write_jsonl(tmp_path / "t.jsonl", [{"image": f"{i}.png", "caption": f"caption {i}"} for i in range(3)])
    b = merge({"t2i": TaskStream("t2i", [JsonlSource(str(path))], p, 3).batch_at(0)}, p.pad_id, pack_length=512)
    assert b["gen_pixels"].shape == (3, 3, 32, 32) and "pixel_values" not in b
    codes = torch.randint(0, 64, (3, 16))
    filled = fill_codes(b, codes)  # what the LightningModule does with the frozen VQ's codes
    assert "gen_pixels" not in filled
    assert sorted(filled["gen_labels"][filled["gen_labels"] != IGNORE].view(3, 16).tolist()) == sorted(codes.tolist())


def test_t2i_codes_and_images_mix_in_one_batch(tmp_path, tiny_processor):
    p = tiny_processor

    def vq(pixels):  # a stand-in VQ: distinct codes per image, in [0, 64)
        return ((pixels.mean(dim=(1, 2, 3)) + 1) * 20).round().long()[:, None] + torch.arange(16)

    images = [str(write_image(tmp_path / f"{i}.png", value=50 * i)) for i in range(5)]
    codes = vq(torch.stack([p.generation_pixels(im) for im in images]))
    assert len({tuple(c) for c in codes.tolist()}) == 5
    every = [{"image": im, "caption": f"caption {i}"} for i, im in enumerate(images)]
    mixed = [r if i % 2 else {"codes": codes[i].tolist(), "caption": r["caption"]} for i, r in enumerate(every)]
    for pack_length in (None, 256):  # padded rows, and several documents per row
        a, b = (merge({"t2i": TaskStream("t2i", [JsonlSource(str(write_jsonl(tmp_path / f"{name}.jsonl", records)))],
                                         p, 5, shuffle=False).batch_at(0)}, p.pad_id, pack_length)
                for name, records in (("every", every), ("mixed", mixed)))
        assert a["gen_pixels"].shape[0] == 5 and b["gen_pixels"].shape[0] == 2  # only the images to encode
        a, b = fill_codes(a, vq(a["gen_pixels"])), fill_codes(b, vq(b["gen_pixels"]))
        assert "encode_mask" not in b and "gen_pixels" not in b
        for key in ("input_ids", "gen_labels", "gen_mask", "position_ids"):
            assert torch.equal(a[key], b[key]), key
        assert sorted(b["gen_labels"][b["gen_labels"] != IGNORE].view(5, 16).tolist()) == sorted(codes.tolist())


# ---- class folders and ShapesWorld --------------------------------------------------------------
def test_class_folder_source(tmp_path, tiny_processor):
    root = tmp_path / "imagenet" / "train"
    for folder, n in (("n01440764", 2), ("n01443537", 1), ("n02_not_in_map", 1)):
        for i in range(n):
            write_image(root / folder / f"{folder}_{i}.JPEG" if i == 0 else root / folder / f"{i}.png", value=9 * i)
    (root / "n01443537" / "notes.txt").write_text("not an image")
    (tmp_path / "imagenet" / "synset_words.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    src = ClassFolderSource(str(root))  # finds synset_words.txt in the parent
    records = [src[i] for i in range(len(src))]
    assert len(src) == 4
    assert [(r["caption"], r["label"]) for r in records] == [("tench", 0), ("tench", 0), ("goldfish", 1),
                                                             ("n02 not in map", 2)]
    s = to_sample("t2i", tiny_processor, records[0])
    assert s.gen_pixels is not None and "tench" in tiny_processor.decode(s.input_ids.tolist())
    (root / "classes.json").write_text(json.dumps({"n01440764": "tinca", "n02_not_in_map": "other, more"}))
    src = ClassFolderSource(str(root))
    assert [src[i]["caption"] for i in (0, 2, 3)] == ["tinca", "n01443537", "other"]  # classes.json in root wins
    assert ClassFolderSource(str(root), first_synonym=False)[3]["caption"] == "other, more"
    with pytest.raises(FileNotFoundError):
        ClassFolderSource(str(tmp_path / "nope"))


def test_shapes_sources_are_deterministic_per_index(tiny_processor):
    p = tiny_processor
    for kind, task in (("qa", "und"), ("text", "text"), ("t2i", "t2i"), ("class", "t2i")):
        src = ShapesSource(kind, length=20, seed=3)
        assert len(src) == 20
        a, b = to_sample(task, p, src[5]), to_sample(task, p, ShapesSource(kind, length=20, seed=3)[5])
        assert torch.equal(a.input_ids, b.input_ids) and a.task == task
    assert ShapesSource("t2i", seed=3)[5]["caption"] != ShapesSource("t2i", seed=4)[5]["caption"] or \
        ShapesSource("t2i", seed=3)[6]["caption"] != ShapesSource("t2i", seed=4)[6]["caption"]
    with pytest.raises(ValueError, match="unknown ShapesWorld kind"):
        ShapesSource("video")
    only = ShapesSource("t2i", seed=3, t2i_weights={"position": 1.0})
    assert {only[i]["category"] for i in range(30)} == {"position"}
    with pytest.raises(ValueError, match="kind 'qa' has none"):
        ShapesSource("qa", t2i_weights={"position": 1.0})


# ---- litdata ------------------------------------------------------------------------------
def test_litdata_round_trip(tmp_path, tiny_processor):
    import multiprocessing

    import litdata  # noqa: F401  (installed by .ci/run; a missing one must fail, not skip)
    from lit_janus.data.optimize import main as optimize_main

    p = tiny_processor
    for i in range(8):
        write_image(tmp_path / "img" / f"{i}.png", value=25 * i)
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    codes = np.arange(32).reshape(2, 16)
    codes[1] = -1  # a row the extractor could not fill
    np.save(tmp_path / "codes.npy", codes)
    records = [{"image": f"img/{i}.png", "caption": f"caption {i}"} for i in range(8)]
    records.append({"image": "img/bad.png", "caption": "bad"})  # left out by the converter, and so are
    records += [{"codes": "codes.npy", "codes_row": row, "caption": "c"} for row in (1, 2)]  # these (row 2: none)
    records.append({"images": ["img/0.png", "img/1.png"], "question": "q", "answer": "two"})
    manifest = write_jsonl(tmp_path / "m.jsonl", records)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no records"):
        optimize_main([str(tmp_path / "empty.jsonl"), str(tmp_path / "lit_empty")])
    start_method = multiprocessing.get_start_method()
    optimize_main([str(manifest), str(tmp_path / "lit"), "--num-workers", "0"])
    assert multiprocessing.get_start_method() == start_method  # litdata sets spawn; later DataLoaders keep ours

    source = StreamingSource(str(tmp_path / "lit"), shuffle=True)
    items = list(source.dataset(seed=0, rank=0, world_size=1))
    assert len(items) == 9
    # images come back byte-identical and give the same samples as the manifest
    by_caption = {}
    for _, rec in zip(range(9), (r for _, r in source.records(seed=0, rank=0, world_size=1))):
        if "caption" in rec:
            by_caption[rec["caption"]] = rec
        else:
            assert len(rec["images"]) == 2 and to_sample("und", p, rec).pixel_values.shape[0] == 2
    jsonl = JsonlSource(str(manifest))
    for i in range(8):
        a = to_sample("t2i", p, by_caption[f"caption {i}"])
        b = to_sample("t2i", p, jsonl[i])
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.gen_pixels, b.gen_pixels)
    # two ranks read disjoint shards of the endless stream; the und record is a bad t2i record
    seen, skipped = [], 0
    for rank in range(2):
        stream = TaskStream("t2i", source, p, 2, rank=rank, world_size=2)
        batches = [b for _, b in zip(range(4), stream)]
        caps = [p.decode(s.input_ids.tolist()) for b in batches for s in b.samples]
        assert all(len(b.samples) == 2 for b in batches)
        skipped += sum(b.skipped for b in batches)
        seen.append(set(caps))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8  # (drop_last left the 9th item out)
    one = [b for _, b in zip(range(9), TaskStream("t2i", source, p, 2))]  # 2 epochs of 9 items, 1 bad
    assert sum(b.skipped for b in one) == 2 and all(len(b.samples) == 2 for b in one)
    # a bad record is replaced from elsewhere: the stream still reads exactly 2 records a step
    assert [b.position for b in one] == [(0, 2 * (t + 1)) for t in range(9)]


def write_litdata(path, manifest, chunk_size=3):
    """`optimize`'s items, written with litdata's writer directly (`optimize` takes seconds to start)."""
    from litdata.streaming.writer import BinaryWriter
    from lit_janus.data.optimize import item

    src = JsonlSource(str(manifest))
    writer = BinaryWriter(str(path), chunk_size=chunk_size)
    for i in range(len(src)):
        writer[i] = item(i, src)
    writer.done()
    writer.merge()
    return StreamingSource(str(path))


def test_litdata_stream_resumes_exactly_with_several_workers(tmp_path, tiny_processor):
    from torch.utils.data import DataLoader

    p = tiny_processor
    manifest = write_jsonl(tmp_path / "t.jsonl", [{"text": f"doc {i}"} for i in range(20)])
    source = write_litdata(tmp_path / "lit", manifest)

    def run(start, steps, offsets, workers=2):
        """`steps` steps from `start`, and the records read from each shard after them (what
        JanusDataModule keeps for the next resume)."""
        stream = TaskStream("text", source, p, 2, seed=1, start_step=start, shard_offsets=offsets)
        out, read = [], list(offsets or [0] * workers)
        for b in DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=as_is):
            out.append(_ids(p, b))
            shard, read[shard] = b.position
            if len(out) == steps:
                return out, read

    straight, read = run(0, 8, [0, 0])
    assert read == [8, 8] and len(set(sum(straight, []))) == 16  # 16 of an epoch of 20: no repeats
    resumed, read = [], [0, 0]
    for start, steps in ((0, 1), (1, 1), (2, 3), (5, 3)):  # resumes at odd and even steps
        part, read = run(start, steps, read)
        resumed += part
    assert resumed == straight and read == [8, 8]
    assert run(3, 2, None)[0] == straight[3:5]  # no offsets: as if this layout had run since step 0
    with pytest.raises(ValueError, match="shard_offsets for 3 DataLoader workers but runs in 1"):
        next(iter(TaskStream("text", source, p, 2, shard_offsets=[0, 0, 0])))

"""The benchmark scripts run with --tiny on CPU and print their ratio lines (no timing asserted)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))  # as when a script runs: its folder (clock.py) is importable


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_train_step_tiny_prints_ratios(capsys):
    results = _load("train_step").main(["--tiny", "--warmup", "1", "--steps", "1"])
    out = capsys.readouterr().out
    assert [r.name for r in results] == ["plain HF Llama (eager)", "ours stage 2 sdpa", "ours stage 2 varlen",
                                         "ours stage 1 sdpa", "ours stage 1 varlen"]
    assert all(r.tokens == results[0].tokens > 0 and r.flops > 0 and r.step_s > 0 for r in results)
    # each attention backend starts from the same weights and batch: the same first-step loss
    first = [float(re.search(r"first loss (\d+\.\d+)", r.note).group(1)) for r in results[1:]]
    assert first[0] == pytest.approx(first[1], abs=2e-3) and first[2] == pytest.approx(first[3], abs=2e-3), first
    assert re.search(r"^ratio ours stage 2 \w+ / plain tokens/s: \d+\.\d\dx", out, re.M), out
    assert re.search(r"^ratio ours stage 1 \w+ / ours stage 2 \w+ tokens/s: \d+\.\d\dx", out, re.M), out
    assert "samples und:text:t2i = 2:3:5" in out  # one whole Stage II unit
    assert "MFU = model FLOPs / step time / peak" in out


def test_stage2_batch_keeps_the_ratio_and_fills_the_rows(tiny_config, tiny_processor):
    ts = _load("train_step")
    batch = ts.stage2_batch(tiny_config, tiny_processor, rows=4, pack_length=512)
    assert batch["input_ids"].shape == (4, 512)
    n = batch["_samples"]
    assert n["und"] * 5 == n["t2i"] * 2 and n["text"] * 2 == n["und"] * 3 and n["und"] >= 2
    assert (batch["task_ids"] > 0).float().mean() > 0.85


def test_memory_tiny_prints_estimate_and_check(capsys):
    report = _load("memory").main(["--tiny", "--micro", "1"])
    out = capsys.readouterr().out
    m = re.search(r"^ratio measured / estimated \(CPU check\): (\d+\.\d\d) at the peak, (\d+\.\d\d) in the last", out, re.M)
    assert m, out
    # the estimate's accounting agrees with FSDPMemTracker on the real FSDP2 plan
    assert 0.8 < float(m.group(1)) < 1.25 and 0.8 < float(m.group(2)) < 1.25
    c = report["census"]
    assert c.trainable < c.total and c.root + c.vq + c.n_llm_layers * c.llm_layer + c.n_vision_layers * c.vision_layer == c.total


def test_memory_census_of_7b_on_meta():
    """Janus-Pro-7B parameter counts from the real modules (meta device, no memory)."""
    from lit_janus.config import Config

    c = _load("memory").census(Config.from_name("janus-pro-7b"), stage=2)
    assert c.n_llm_layers == 30 and c.llm_layer == 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert 6.8e9 < c.parts["llm"][0] < 7.0e9 and c.parts["llm"][1] and not c.parts["vision"][1]
    assert not c.parts["vq"][1] and c.trainable == c.total - c.parts["vision"][0] - c.parts["vq"][0]


def test_generate_tiny_prints_the_ratio(capsys, one_thread):
    _load("generate").main(["--tiny", "--images", "2", "--repeats", "1", "--profile"])
    out = capsys.readouterr().out
    assert re.search(r"ratio", out) and re.search(r"\d+\.\d+\s*s", out), out
    # --profile: one call's busiest ops, the matmuls among them
    assert re.search(r"^profile: \d+ op calls, \d+\.\d ms in all$", out, re.M) and "aten::" in out, out


def test_understand_tiny_prints_the_ratio(capsys, one_thread):
    _load("understand").main(["--tiny"])
    out = capsys.readouterr().out
    assert re.search(r"ratio", out) and re.search(r"\d+\.\d+\s*s", out), out


def test_train_step_profile_prints_one_step_of_the_first_variant(capsys):
    results = _load("train_step").main(["--tiny", "--warmup", "1", "--steps", "1", "--stages", "2", "--no-plain",
                                        "--attn", "sdpa", "--profile"])
    out = capsys.readouterr().out
    assert len(results[0].times) == 1  # the profiled step is not timed
    assert re.search(r"^  sdpa stage 2, one step: profile: \d+ op calls, \d+\.\d ms in all$", out, re.M), out

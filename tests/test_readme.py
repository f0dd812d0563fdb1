"""The README's Python API example runs (on the tiny checkpoint, CPU, float32)."""

import re
from pathlib import Path

import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, tiny_hf_dir, monkeypatch, one_thread):
    text = README.read_text()
    block = re.search(r"## Python API\n+```python\n(.*?)```", text, re.S).group(1)
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = (block.replace("checkpoints/Janus-Pro-1B", str(tiny_hf_dir)).replace("torch.bfloat16", "torch.float32")
            .replace('device="cuda"', 'device="cpu"').replace("max_new_tokens=64", "max_new_tokens=4")
            .replace("exports/janus-pro-1b-hf", str(tmp_path / "export")))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"].images.shape == (4, 32, 32, 3) and scope["codes"].shape == (1, 16)
    assert set(scope["losses"]) >= {"und_loss", "text_loss", "gen_loss"}
    assert (tmp_path / "export" / "config.json").is_file()

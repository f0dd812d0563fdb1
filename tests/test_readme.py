"""The README's Python API example runs (on the tiny checkpoint, CPU, float32)."""

import re
from pathlib import Path

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


ROOT = README.parent
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "configs").rglob("*.md")), *sorted((ROOT / "checkpoints").rglob("*.md")),
            *sorted((ROOT / "notebooks").glob("*.md"))]


def test_markdown_links_resolve():
    """Relative links and images in the READMEs and the committed results files name files that exist
    (two results files once linked to a `samples/` folder that only the run's output directory had)."""
    checked = 0
    for md in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            checked += 1
            assert (md.parent / target.split("#")[0]).exists(), f"{md.relative_to(ROOT)} links to missing {target}"
    assert checked >= 20  # the results files' sample grids at least


def test_package_layout_names_every_module():
    block = re.search(r"## Package layout\n+```\n(.*?)```", README.read_text(), re.S).group(1)
    modules = [p for p in (ROOT / "lit_janus").rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules if not re.search(rf"\b{p.stem}(\.py)?\b", block))
    assert not missing, f"README's package layout does not mention {missing}"

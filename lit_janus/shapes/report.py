"""The pipeline's results: `results.json` (everything, for scripts) and `results.md` (the table a README
quotes), rewritten atomically after every evaluation so a stopped run still shows what it reached."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from lit_janus.predict.writers import atomic_write


def hardware() -> str:
    """CPU model, core count, torch build and threads, and the GPU if there is one: the line results quote."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    s = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        s += f", GPU {torch.cuda.get_device_name(0)}"
    return s


def step_times_line(times: dict[str, float]) -> str:
    names = {"period_ms": "period", "data_ms": "data", "step_ms": "step", "gpu_backlog_ms": "gpu backlog"}
    parts = [f"{label} {times[k]:.1f}" for k, label in names.items() if k in times]
    return ", ".join(parts) + f" ({times.get('steps', 0)} steps)"


def row_line(row: dict, categories: list[str]) -> str:
    """One results row as the log prints it: `categories` with their exact-scene rates, overall, VQA."""
    g = row.get("geneval", {})
    parts = [f"{c} {g[c]:.2f} (exact {g[f'exact_{c}']:.2f})" if f"exact_{c}" in g else f"{c} {g[c]:.2f}"
             for c in categories if c in g]
    if "overall" in g:
        parts.append(f"overall {g['overall']:.2f}")
    if "exact" in g:
        parts.append(f"exact-scene {g['exact']:.2f}")
    if row.get("heldout"):
        parts.append(f"held-out overall {row['heldout'].get('overall', 0):.2f}")
    if row.get("vqa") is not None:
        parts.append(f"VQA {row['vqa']:.2f}")
    return f"{row['label']}: " + ", ".join(parts)


def write_results(out: Path, *, name: str, description: str, rows: list[dict[str, Any]], eval_spec,
                  timings: dict[str, float], step_times: dict[str, dict[str, float]], total_s: float,
                  checkpoints: dict[str, str], extra: dict[str, Any], complete: bool) -> None:
    """`out`/results.json and results.md; `complete` once the run has ended (else the table says so)."""
    from lit_janus.shapes.evaluate import TABLE_COLUMNS
    from lit_janus.shapes.world import CATEGORIES, HELDOUT_CATEGORIES

    machine = hardware()
    data = {"pipeline": name, "description": description, "rows": rows, "timings_s": timings,
            "step_times_ms": step_times, "total_s": total_s, "hardware": machine,
            "command": " ".join(["python -m lit_janus.shapes.pipeline", *sys.argv[1:]]),
            "checkpoints": checkpoints, "complete": complete, **extra}
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))

    cols = [*TABLE_COLUMNS, "Exact scene", "Held-out Colors", "Held-out Color Attri.", "VQA"]
    lines = [f"# ShapesWorld results: {name}", "", description.strip(), "",
             f"Command: `{data['command']}`  ",
             f"Hardware: {machine}  ",
             f"Wall time: {total_s:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")",
             *([] if complete else ["", "**Incomplete**: the run has not finished (or stopped) after the last "
                                        "row below; rerun the same command to resume it."]),
             "", "| Row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        g, h = r.get("geneval", {}), r.get("heldout", {})
        cells = [f"{g[c]:.2f}" if c in g else "-" for c in (*CATEGORIES, "overall", "exact")]
        cells += [f"{h[c]:.2f}" if c in h else "-" for c in HELDOUT_CATEGORIES]
        cells.append(f"{r['vqa']:.2f}" if r.get("vqa") is not None else "-")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    exact_rows = [r for r in rows if any(k.startswith("exact_") for k in r.get("geneval", {}))]
    if exact_rows:
        cats = [c for c in CATEGORIES if any(f"exact_{c}" in r["geneval"] for r in exact_rows)]
        lines += ["", "Exact-scene rate per category (passes GenEval's rule and holds nothing else):", "",
                  "| Row | " + " | ".join(TABLE_COLUMNS[CATEGORIES.index(c)] for c in cats) + " | Held-out |",
                  "|---|" + "---|" * (len(cats) + 1)]
        for r in exact_rows:
            g, h = r["geneval"], r.get("heldout", {})
            cells = [f"{g[f'exact_{c}']:.2f}" if f"exact_{c}" in g else "-" for c in cats]
            cells.append(f"{h['exact']:.2f}" if "exact" in h else "-")
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    spec = eval_spec
    lines += ["", f"ShapesEval: {spec.n_per_category} prompts per category (train split, new draws), "
                  f"{spec.n_heldout} per held-out category (colour-shape combos never trained as generation "
                  f"targets); CFG weight {spec.cfg_weight}, temperature {spec.temperature}. VQA: "
                  f"{spec.n_vqa} questions on held-out scenes (world seed {spec.seed}), greedy, exact match. "
                  "Overall = mean of the categories scored (GenEval's rules: at least the named objects). "
                  "Exact scene = images that pass and hold nothing but the named objects (mean over the "
                  "categories): this detector finds 'shapes' in any colour blob, so an untrained model's "
                  "scattered blobs pass GenEval's 'at least' rules; read Exact beside Overall.", ""]
    vqa_rows = [r for r in rows if r.get("vqa_by_type")]
    if vqa_rows:
        types = sorted({t for r in vqa_rows for t in r["vqa_by_type"]})
        lines += ["VQA by question type:", "", "| Row | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
        for r in vqa_rows:
            lines.append(f"| {r['label']} | " + " | ".join(f"{r['vqa_by_type'].get(t, 0):.2f}" for t in types) + " |")
        lines.append("")
    if extra.get("stage0"):
        lines += ["Stage 0: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in extra["stage0"].items()), ""]
    samples = out / "samples"
    if samples.is_dir() and any(samples.glob("*.png")):
        lines += ["Samples (one row per category: " + ", ".join(spec.categories or CATEGORIES)
                  + (", then the held-out colors / color_attr" if spec.n_heldout else "") + "):", ""]
        lines += [f"- {r['label']}: ![{r['name']}](samples/{r['name']}.png)" for r in rows
                  if (samples / f"{r['name']}.png").is_file()]
    if step_times:
        lines += ["", "Milliseconds per training step (medians; `lit_janus.callbacks.StepTimes`: period = data + "
                      "step; gpu backlog near 0 means the GPU waits for Python):", ""]
        lines += [f"- {run}: " + step_times_line(t) for run, t in step_times.items()]
    atomic_write(out / "results.md", lambda tmp: tmp.write_text("\n".join(lines) + "\n"))

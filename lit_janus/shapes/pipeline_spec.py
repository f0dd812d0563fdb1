"""The pipeline file: which stage configs run in which order, their steps and overrides, the
evaluation and the ablation branches (configs/shapes/*.yaml), checked when it is read so a mistake
fails before hours of earlier stages rather than after them."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = ROOT / "configs" / "shapes"


def presets() -> list[str]:
    """Names `--preset` takes: the pipeline files in configs/shapes (the stage configs beside them are not)."""
    return sorted(f.stem for f in PRESETS_DIR.glob("*.yaml") if re.search(r"^(stages|stage0):", f.read_text(), re.M))


# ---------------------------------------------------------------------------------------------
# the pipeline file
# ---------------------------------------------------------------------------------------------
@dataclass
class StageSpec:
    name: str
    config: str
    """LightningCLI config of the stage (relative to the pipeline file)."""
    max_steps: int
    set: dict[str, Any] = field(default_factory=dict)
    """Overrides as dotted keys (`data.init_args.global_batch_size: 32`) merged over the config."""
    init_from: str | None = None
    """Stage whose checkpoint this one starts from (default: the previous one; `init` = the assembled checkpoint)."""
    evaluate: bool = True
    eval_every: int = 0
    """ShapesEval/VQA logged to TensorBoard every this many steps during training (0: off)."""
    label: str | None = None
    """Row name in the results table."""


@dataclass
class PipelineSpec:
    name: str = "shapes"
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    """`Config` overrides of the `shapes` preset for the assembled model (e.g. a smaller LLM)."""
    stage0_reuse: str | None = None
    """Directory with vq.safetensors / vision.safetensors / stage0.json: skip stages 0a/0b and use them."""
    stage0: list[StageSpec] = field(default_factory=list)
    """[vq, siglip] training runs (used when `stage0_reuse` is unset or missing)."""
    stage0_retrain: list[str] = field(default_factory=list)
    """Names of stage0 runs to train even though `stage0_reuse` exists; the other part is reused."""
    export_stage0: str | None = None
    """Also copy the trained stage-0 weights here (e.g. checkpoints/shapes/stage0, what demo.yaml reuses)."""
    stages: list[StageSpec] = field(default_factory=list)
    ablations: list[dict[str, Any]] = field(default_factory=list)
    """Branches: {name, from: <stage>, stages: [StageSpec...], model: {Config overrides}} - evaluated like
    the main line. With `model` the branch starts from its own assembled checkpoint (same stage 0 and
    seed, e.g. `{und_encoder: vq}`), so `from` must be `init`."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Trainer overrides applied to every run (accelerator, precision, ...)."""
    eval: dict[str, Any] = field(default_factory=dict)
    """`EvalSpec` fields for the after-stage evaluations."""
    eval_init: bool = False
    """Also evaluate the assembled (untrained) model: the 'before' row."""
    print_categories: list[str] = field(default_factory=lambda: ["single_object", "colors"])
    seed: int = 0
    checkpoint_every: int = 200
    """Steps between each run's `last.ckpt` (also at its end): what a rerun of a stopped pipeline resumes from."""

    @classmethod
    def load(cls, path: str | Path) -> tuple["PipelineSpec", Path]:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a pipeline file is a mapping (name, stage0, stages, ...), not a {type(data).__name__}")

        def stages(items):
            if items is not None and not isinstance(items, list):
                raise ValueError(f"{p}: stage lists are lists of runs ({{name, config, max_steps, ...}}), got {items!r}")
            out = []
            for s in items or []:
                try:
                    out.append(StageSpec(**s))
                except TypeError as e:  # a misspelt or missing key
                    fields = ", ".join(f.name for f in dataclasses.fields(StageSpec))
                    raise ValueError(f"{p}: run {s.get('name') if isinstance(s, dict) else s!r}: {e} (a run has: "
                                     f"{fields})") from None
                if not (p.parent / out[-1].config).is_file():  # found now, not after the stages before it
                    raise FileNotFoundError(f"{p}: run {out[-1].name!r}: stage config {p.parent / out[-1].config} "
                                            "not found (paths are relative to the pipeline file)")
            return out

        data["stage0"] = stages(data.get("stage0"))
        data["stages"] = stages(data.get("stages"))
        for ab in data.get("ablations") or []:
            ab["stages"] = stages(ab.get("stages"))
            if ab.get("model") and ab.get("from") != "init":
                raise ValueError(f"{p}: ablation {ab.get('name')!r} changes the model ({ab['model']}), so it must "
                                 f"start from: init (its own assembled checkpoint), not {ab.get('from')!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{p}: unknown pipeline keys {sorted(unknown)}")
        from lit_janus.config import Config

        for where, model in [("model", data.get("model") or {})] + [
                (f"ablation {ab.get('name')!r} model", ab.get("model") or {}) for ab in data.get("ablations") or []]:
            bad = sorted(set(model) - {f.name for f in dataclasses.fields(Config)})
            if bad:
                raise ValueError(f"{p}: {where}: unknown Config field(s) {bad}")
        # each run is a `fit` inside this process; Lightning would start the other ranks of a multi-device
        # run by running this command again, i.e. N whole pipelines. Refused here, before hours of earlier
        # stages, where the stacked configs say so literally; `Pipeline.fit` checks the built trainer.
        runs = data["stage0"] + data["stages"] + [s for ab in data.get("ablations") or [] for s in ab["stages"]]
        for who, layout in [(f"run {s.name!r}", trainer_layout(p.parent / s.config, data.get("trainer") or {}, s.set))
                            for s in runs]:
            if any((device_count(layout.get(k, 1)) or 1) > 1 for k in ("devices", "num_nodes")):
                raise ValueError(f"{p}: the pipeline trains on one device, but {who} asks for {layout}; run a "
                                 "multi-device stage by hand from its <out>/<stage>/command.txt with --trainer.devices N")
        # checkpoints, sample grids, logs and results are keyed by run name: a repeat would overwrite
        names = [s.name for s in data["stage0"] + data["stages"]]
        names += [s.name for ab in data.get("ablations") or [] for s in ab["stages"]]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{p}: run names must be unique (each names its output folder), repeated: {repeated}")
        return cls(**data), p.resolve().parent

    def smoke(self, max_steps: int = 2) -> "PipelineSpec":
        """The same pipeline cut to `max_steps` per run and a handful of evaluation prompts: every
        config, override, branch and evaluation still runs, so a preset meant for a GPU can be checked
        end to end on a laptop first. Nothing is exported (stage-0 weights of a smoke run are noise)."""

        def cut(stages: list[StageSpec]) -> list[StageSpec]:
            return [dataclasses.replace(s, max_steps=min(s.max_steps, max_steps),
                                        eval_every=min(s.eval_every, max_steps)) for s in stages]

        ev = {**self.eval, "n_per_category": 2, "n_heldout": min(2, self.eval.get("n_heldout", 2)),
              "n_vqa": min(4, self.eval.get("n_vqa", 4)), "samples_per_category": 2}
        return dataclasses.replace(
            self, name=f"{self.name}_smoke", stage0=cut(self.stage0), stages=cut(self.stages),
            ablations=[{**ab, "stages": cut(ab["stages"])} for ab in self.ablations], eval=ev,
            export_stage0=None)


def trainer_layout(config: Path, trainer: dict, overrides: dict) -> dict[str, Any]:
    """`trainer.devices` / `trainer.num_nodes` as a run would stack them: the stage config (and the files it
    names under `defaults`), then the pipeline's `trainer`, then the run's `set`."""
    from lit_janus.cli import expand_defaults

    def pick(tree: Any) -> dict[str, Any]:
        tree = tree.get("trainer") if isinstance(tree, dict) else None
        return {k: v for k, v in tree.items() if k in ("devices", "num_nodes")} if isinstance(tree, dict) else {}

    layout: dict[str, Any] = {}
    for part in expand_defaults(config):
        text = part if "\n" in part else Path(part).read_text()  # a path, or YAML text (always ends in a newline)
        layout.update(pick(yaml.safe_load(text)))
    layout.update(pick({"trainer": trainer}))
    nested: dict[str, Any] = {}
    for k, v in overrides.items():  # dotted keys, as `set` is documented, or a nested `trainer: {...}`
        set_dotted(nested, k, v)
    layout.update(pick(nested))
    return layout


def device_count(value: Any) -> int | None:
    """How many devices a `devices`/`num_nodes` value names, or None where only the machine can say
    ("auto", -1: all of them)."""
    if isinstance(value, (list, tuple)):
        return len(value)
    text = str(value).strip()
    if "," in text:  # "0,1" or "0,": a list of device indices
        return len([t for t in text.split(",") if t.strip()])
    try:
        n = int(text)
    except ValueError:
        return None
    return None if n < 0 else max(n, 1)


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """`set_dotted(t, "data.init_args.global_batch_size", 32)`: the nested form LightningCLI reads."""
    node = tree
    parts = key.split(".")
    for k in parts[:-1]:
        node = node.setdefault(k, {})
    node[parts[-1]] = value

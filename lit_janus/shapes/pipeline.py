"""The whole ShapesWorld reproduction in one command.

    python -m lit_janus.shapes.pipeline --config configs/shapes/demo.yaml --out runs/shapes_demo
    python -m lit_janus.shapes.pipeline --preset full --out runs/shapes        # = configs/shapes/full.yaml

Stage 0a (VQ tokenizer) -> 0b (SigLIP encoder) -> assemble (random LLM + both encoders) -> Stage I
-> II -> III (+ ablation branches), every training stage a `fit` of the project's LightningCLI
(`lit_janus.cli.main`, the same configs a user runs by hand: configs/shapes/stage*.yaml), then
ShapesEval + VQA after each stage. Writes into `--out`:

    results.md / results.json   the table (rows: ground truth, VQ reconstructions, after each stage,
                                ablations; columns: GenEval categories + overall, held-out combos, VQA)
    samples/<stage>.png          generated images, one row per category
    tb/                          TensorBoard logs of every stage (and `tb/pipeline`: the table over stages)
    stage0/                      vq.safetensors + vision.safetensors (drop-in JanusPro weights)
    init/                        the assembled Stage I starting checkpoint (transformers layout)
    <stage>/checkpoints/last.ckpt   every `checkpoint_every` steps and at the end of each run

A stopped pipeline resumes: rerun the same command (same --out). Finished runs end at once (their
evaluations run again), a stopped one continues from its last.ckpt; a run whose settings changed is
refused rather than mixed with the old one.

A pipeline file (YAML) names the stage configs and sets steps and sizes; see configs/shapes/demo.yaml
(read and checked by `pipeline_spec`; the table is written by `report`).
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make a shared or small CPU crawl (measured here: a 2-thread
# training step took 10-19 s with the default policy on a busy 2-core machine, 1.3-1.9 s with PASSIVE).
# Must be set before torch (libgomp) loads: effective when run as `python -m lit_janus.shapes.pipeline`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from lit_janus.atomic import recover_replaced  # noqa: E402
from lit_janus.cli import JanusCLI  # noqa: E402
from lit_janus.predict.writers import atomic_write  # noqa: E402
from lit_janus.shapes.pipeline_spec import PRESETS_DIR, ROOT, PipelineSpec, StageSpec, presets, set_dotted  # noqa: E402
from lit_janus.shapes.report import hardware, row_line, step_times_line, write_results  # noqa: E402


# ---------------------------------------------------------------------------------------------
# running one stage through the project CLI
# ---------------------------------------------------------------------------------------------
class OneProcessCLI(JanusCLI):
    """The project CLI, refusing a trainer of more than one process before `fit` launches the others
    (Lightning starts them by running this process's command again: N whole pipelines)."""

    def before_fit(self) -> None:
        if self.trainer.world_size != 1:
            raise ValueError(f"the pipeline trains on one device, but this run's trainer has {self.trainer.world_size} "
                             f"processes ({self.trainer.num_nodes} node(s) x {self.trainer.num_devices} device(s)); run "
                             "a multi-device stage by hand from its <out>/<stage>/command.txt with --trainer.devices N")


class Pipeline:
    def __init__(self, spec: PipelineSpec, base_dir: Path, out: str | Path, *, log=print,
                 earlier_checkpoints: dict[str, str] | None = None, carried_rows: list[dict[str, Any]] | None = None,
                 carried_step_times: dict[str, dict[str, float]] | None = None):
        """`earlier_checkpoints` / `carried_rows` / `carried_step_times`: stages an earlier run into `out`
        trained (the main line, under --only-ablations), which branches start from, and that run's results
        rows and step times: the table keeps those this run does not redo (rows after the ceilings), so that
        rewriting it loses none."""
        self.spec, self.base_dir, self.out = spec, base_dir, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.carried_rows = list(carried_rows or [])
        self.checkpoints: dict[str, str] = dict(earlier_checkpoints or {})
        self.rows: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.step_times: dict[str, dict[str, float]] = dict(carried_step_times or {})
        self.extra: dict[str, Any] = {}
        self._tb = None
        self.t0 = time.perf_counter()

    # ---- helpers ------------------------------------------------------------------------------
    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.t0:6.0f}s"

    def _config_path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else (self.base_dir / p)

    def _callbacks(self, stage: StageSpec, eval_callback: bool) -> list[dict]:
        cbs = [{"class_path": "lit_janus.callbacks.Checkpoint",
                "init_args": {"dirpath": str(self.out / stage.name / "checkpoints"), "save_last": True,
                              "save_top_k": 0, "every_n_train_steps": self.spec.checkpoint_every}},
               {"class_path": "lit_janus.callbacks.StepTimes"}]
        if eval_callback:
            cbs.append({"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                        "init_args": {"logging_interval": "step"}})
        if eval_callback and stage.eval_every:
            ev = {k: v for k, v in self.spec.eval.items() if k in ("n_per_category", "categories", "n_vqa")}
            cbs.append({"class_path": "lit_janus.shapes.evaluate_model.ShapesEvalCallback",
                        "init_args": {"every_n_steps": stage.eval_every, "at_end": False, **ev}})
        return cbs

    def model_config(self):
        from lit_janus.config import Config

        return Config.from_name("shapes", **self.spec.model)

    def fit(self, stage: StageSpec, init_from: str | None = None, eval_callback: bool = True,
            stage0: bool = False):
        """`lit_janus.cli.main(["fit", --config stage.yaml, --config <overlay>])`: the same code path
        as `python main.py fit`. Returns the CLI (its trainer and trained module)."""
        from lit_janus.cli import main

        overlay: dict[str, Any] = {"seed_everything": self.spec.seed}
        set_dotted(overlay, "trainer.max_steps", stage.max_steps)
        set_dotted(overlay, "trainer.logger", {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.out / "tb"), "name": stage.name, "version": ""}})
        set_dotted(overlay, "trainer.callbacks", self._callbacks(stage, eval_callback))
        set_dotted(overlay, "trainer.enable_model_summary", False)
        for k, v in self.spec.trainer.items():
            set_dotted(overlay, f"trainer.{k}", v)
        cfg = self.model_config()
        if stage0:  # the stage-0 modules build the visual parts at the assembled model's sizes
            set_dotted(overlay, "model.init_args.overrides", dict(self.spec.model))
        else:
            set_dotted(overlay, "data.init_args.num_image_tokens", cfg.num_image_tokens)
        set_dotted(overlay, "data.init_args.image_size", cfg.image_size)
        if init_from is not None:
            set_dotted(overlay, "model.init_args.init_from", init_from)
        for k, v in stage.set.items():
            set_dotted(overlay, k, v)
        (self.out / stage.name).mkdir(parents=True, exist_ok=True)
        overlay_path = self.out / stage.name / "overlay.yaml"
        text = ("# written by lit_janus.shapes.pipeline: this run's settings over the stage config\n"
                + yaml.safe_dump(overlay, sort_keys=False))
        args = ["fit", "--config", str(self._config_path(stage.config)), "--config", str(overlay_path),
                "--trainer.enable_progress_bar", str(sys.stderr.isatty()).lower()]  # not in the overlay: a rerun compares it
        last = self.out / stage.name / "checkpoints" / "last.ckpt"
        recover_replaced(last)  # a save killed between its renames
        resume = last.is_file()
        if resume:  # a rerun into the same --out: continue this run if it is this run (a finished one ends at once)
            if not overlay_path.is_file() or overlay_path.read_text() != text:
                raise ValueError(f"{self.out / stage.name} holds a run with other settings than this one ({overlay_path} "
                                 "differs): rerun the same command to resume it, or use another --out")
            args += ["--ckpt_path", str(last)]
        overlay_path.write_text(text)
        (self.out / stage.name / "command.txt").write_text("python main.py " + " ".join(args) + "\n")
        t = time.perf_counter()
        self.log(f"[{self.elapsed()}] {stage.name}: " + (f"resuming from {last}, " if resume else "")
                 + f"fit {stage.config} for {stage.max_steps} steps" + (f" from {init_from}" if init_from else ""))
        cli = main(args, cli_class=OneProcessCLI)
        self.timings[stage.name] = time.perf_counter() - t
        ckpt = cli.trainer.checkpoint_callback.last_model_path
        if not ckpt or not Path(ckpt).is_file():
            raise RuntimeError(f"{stage.name} wrote no last checkpoint")
        self.checkpoints[stage.name] = ckpt
        self.log(f"[{self.elapsed()}] {stage.name}: done in {self.timings[stage.name]:.0f}s -> {ckpt}")
        from lit_janus.callbacks import StepTimes

        times = next((cb.summary() for cb in cli.trainer.callbacks if isinstance(cb, StepTimes)), {})
        if times:
            self.step_times[stage.name] = times
            self.log(f"[{self.elapsed()}] {stage.name}: per step (median ms) " + step_times_line(times))
        return cli

    # ---- stage 0 + assemble -----------------------------------------------------------------
    def stage0(self) -> Path:
        from lit_janus.config import Config
        from lit_janus.shapes.assemble import export_stage0
        from lit_janus.shapes.siglip import SigLIPModule

        out = self.out / "stage0"
        reuse, retrain = self.spec.stage0_reuse, set(self.spec.stage0_retrain)
        unknown = retrain - {st.name for st in self.spec.stage0}
        if unknown:
            raise ValueError(f"stage0_retrain names {sorted(unknown)}, which are not stage0 runs")
        src = None
        if reuse:
            src = Path(reuse) if Path(reuse).is_absolute() else ROOT / reuse
            if not ((src / "vq.safetensors").is_file() and (src / "vision.safetensors").is_file()):
                self.log(f"[{self.elapsed()}] stage 0: {src} not found, training stage 0 here")
                src = None
        if src is not None and not retrain:
            self.log(f"[{self.elapsed()}] stage 0: reusing {src} (trained by an earlier pipeline run; "
                     "unset stage0_reuse to train it here)")
            if src.resolve() != out.resolve():
                shutil.copytree(src, out, dirs_exist_ok=True)
            self.extra["stage0"] = {"reused": str(reuse)}
            meta = src / "stage0.json"
            if meta.is_file():
                self.extra["stage0"] |= json.loads(meta.read_text()).get("metrics", {})
            return out
        if src is None and len(self.spec.stage0) != 2:
            raise ValueError("stage0 needs two runs: [vq, siglip]")
        # parts come from the runs trained here, the rest from `src` (stage0_retrain)
        parts, metrics, config = {}, {}, None
        if src is not None:
            old = json.loads((src / "stage0.json").read_text())
            parts = {"vq": src / "vq.safetensors", "vision": src / "vision.safetensors"}
            metrics, config = dict(old.get("metrics", {})), Config(**old["config"])
            self.log(f"[{self.elapsed()}] stage 0: retraining {sorted(retrain)}, the rest from {src}")
        for st in self.spec.stage0:
            if src is not None and st.name not in retrain:
                continue
            cli = self.fit(st, eval_callback=False, stage0=True)
            part, prefix = ("vision", "siglip") if isinstance(cli.model, SigLIPModule) else ("vq", "vq")
            parts[part] = self.checkpoints[st.name]
            new = {f"{prefix}_{k[4:]}": float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
            saved = self.out / st.name / "val_metrics.json"
            if new:
                atomic_write(saved, lambda tmp: tmp.write_text(json.dumps(new, indent=1)))
            elif saved.is_file():  # a finished run resumed ends without validating: its last validation
                new = json.loads(saved.read_text())
            metrics = {k: v for k, v in metrics.items() if not k.startswith(prefix + "_")} | new
            if part == "vq" or config is None:
                config = cli.model.config
        self.extra["stage0"] = metrics
        export_stage0(parts["vq"], parts["vision"], out, config=config)
        meta = json.loads((out / "stage0.json").read_text())
        meta["metrics"] = metrics
        meta["produced_by"] = f"python -m lit_janus.shapes.pipeline (spec {self.spec.name})"
        atomic_write(out / "stage0.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        self.log(f"[{self.elapsed()}] stage 0: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if self.spec.export_stage0:
            dest = Path(self.spec.export_stage0)
            dest = dest if dest.is_absolute() else ROOT / dest
            _replace_files(dest, [out / f for f in ("vq.safetensors", "vision.safetensors", "stage0.json")])
            self.log(f"[{self.elapsed()}] stage 0 weights exported to {dest}")
        return out

    def assemble(self, stage0_dir: Path, name: str = "init", **overrides) -> str:
        from lit_janus.shapes.assemble import assemble

        t = time.perf_counter()
        path = assemble(stage0_dir / "vq.safetensors", stage0_dir / "vision.safetensors", self.out / name,
                        "shapes", seed=self.spec.seed, **{**self.spec.model, **overrides})
        self.timings[f"assemble_{name}" if overrides else "assemble"] = time.perf_counter() - t
        self.checkpoints[name] = str(path)
        self.log(f"[{self.elapsed()}] assembled {path}" + (f" with {overrides}" if overrides else ""))
        return str(path)

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_spec(self):
        from lit_janus.shapes.evaluate_model import EvalSpec

        return EvalSpec(**self.spec.eval)

    def eval_device(self) -> torch.device:
        """CUDA when this pipeline trains on a GPU and one is here, else the CPU."""
        accelerator = self.spec.trainer.get("accelerator", "cpu")
        return torch.device("cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")

    def evaluate(self, name: str, label: str, model, processor, *, ceilings: bool = False) -> dict:
        from lit_janus.shapes.evaluate_model import evaluate_model, sample_grid, save_grid

        spec = self.eval_spec()
        spec.ceilings = ceilings
        # Lightning's teardown leaves a trained module on the CPU: sample on the GPU the stage trained on
        res, art = evaluate_model(model.to(self.eval_device()), processor, spec)
        self.timings[f"eval_{name}"] = res.seconds
        grid = sample_grid(art, spec.samples_per_category)
        if grid is not None:
            save_grid(grid, self.out / "samples" / f"{name}.png")
        if ceilings:
            self.rows.append({"name": "ground_truth", "label": "ShapesWorld renders (detector check)",
                              "geneval": res.ground_truth})
            self.rows.append({"name": "vq_reconstruction", "label": "VQ reconstructions (ceiling)",
                              "geneval": res.vq_reconstruction})
        row = {"name": name, "label": label, "geneval": res.geneval, "heldout": res.heldout, "vqa": res.vqa,
               "vqa_by_type": res.vqa_by_type, "eval_seconds": res.seconds, "vqa_examples": res.examples[:6]}
        self.rows.append(row)
        self._tb_log(len([r for r in self.rows if "vqa" in r]) - 1, row)
        self.log(self._row_line(row))
        self.write_results()
        return row

    def _row_line(self, row: dict) -> str:
        return f"[{self.elapsed()}] " + row_line(row, self.spec.print_categories)

    def _tb_log(self, index: int, row: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._tb is None:
            self._tb = SummaryWriter(str(self.out / "tb" / "pipeline"))
        for k, v in row.get("geneval", {}).items():
            self._tb.add_scalar(f"shapes_eval/{k}", v, index)
        for k, v in row.get("heldout", {}).items():
            self._tb.add_scalar(f"shapes_eval_heldout/{k}", v, index)
        if row.get("vqa") is not None:
            self._tb.add_scalar("vqa/accuracy", row["vqa"], index)
        self._tb.add_text("rows", f"{index}: {row['label']}", index)
        grid = self.out / "samples" / f"{row['name']}.png"
        if grid.is_file():
            import numpy as np
            from PIL import Image

            self._tb.add_image(f"samples/{row['name']}", np.asarray(Image.open(grid)), index, dataformats="HWC")
        self._tb.flush()

    def _evaluate_cli(self, name: str, label: str, cli) -> dict:
        module = cli.model
        return self.evaluate(name, label, module.model, module.processor)

    # ---- reporting ------------------------------------------------------------------------------
    def write_results(self, complete: bool = False) -> None:
        """results.json / results.md (atomically): after every evaluation, `complete` once the run ends."""
        write_results(self.out, name=self.spec.name, description=self.spec.description, rows=self.rows,
                      eval_spec=self.eval_spec(), timings=self.timings, step_times=self.step_times,
                      total_s=time.perf_counter() - self.t0, checkpoints=self.checkpoints, extra=self.extra,
                      complete=complete)

    # ---- the whole run --------------------------------------------------------------------------
    def run(self) -> dict:
        from lit_janus.checkpoint import load_any

        spec = self.spec
        stage0_dir = self.stage0()
        init = self.assemble(stage0_dir)
        model, processor = load_any(init)
        self.evaluate("init", "assembled (untrained LLM)", model, processor, ceilings=True) if spec.eval_init else \
            self._ceilings_only(model, processor)
        del model
        redone = {r["name"] for r in self.rows} | {s.name for s in spec.stages} | {
            s.name for ab in spec.ablations for s in ab["stages"]}
        self.rows += [r for r in self.carried_rows if r["name"] not in redone]
        prev = "init"
        for st in spec.stages:
            start = self.checkpoints[st.init_from or prev]
            cli = self.fit(st, init_from=start)
            if st.evaluate:
                self._evaluate_cli(st.name, st.label or st.name, cli)
            prev = st.name
            del cli
        for ab in spec.ablations:
            prev = ab["from"]
            if ab.get("model"):
                prev = f"init_{ab['name']}"
                self.assemble(stage0_dir, prev, **ab["model"])
            for st in ab["stages"]:
                cli = self.fit(st, init_from=self.checkpoints[st.init_from or prev])
                if st.evaluate:
                    self._evaluate_cli(st.name, st.label or st.name, cli)
                prev = st.name
                del cli
        self.write_results(complete=True)
        self.log(f"[{self.elapsed()}] wrote {self.out / 'results.md'}")
        if self._tb is not None:
            self._tb.close()
        return json.loads((self.out / "results.json").read_text())

    def _ceilings_only(self, model, processor) -> None:
        from lit_janus.shapes.evaluate_model import score, t2i_set, vq_reconstructions

        spec = dataclasses.replace(self.eval_spec(), image_size=model.config.image_size)
        t = time.perf_counter()
        _, metas, gt = t2i_set(spec, "train")
        with torch.no_grad():
            self.rows.append({"name": "ground_truth", "label": "ShapesWorld renders (detector check)",
                              "geneval": score(gt, metas)})
            self.rows.append({"name": "vq_reconstruction", "label": "VQ reconstructions (ceiling)",
                              "geneval": score(vq_reconstructions(model, gt), metas)})
        self.timings["eval_ceilings"] = time.perf_counter() - t
        for r in self.rows[-2:]:
            self.log(self._row_line(r))
        self.write_results()


def _replace_files(dest: Path, files: list[Path]) -> None:
    """Copy `files` into `dest` as one swap: a kill never leaves a VQ from one run beside an encoder
    from another (the demo reuses what it finds). Other files in `dest` (its README) are kept."""
    from lit_janus.atomic import replace_dir

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(dest, tmp) if dest.is_dir() else tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, tmp / f.name)
    replace_dir(tmp, dest)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lit_janus.shapes.pipeline", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="pipeline file (e.g. configs/shapes/demo.yaml)")
    g.add_argument("--preset", help="a pipeline file in configs/shapes by name: " + ", ".join(presets()))
    p.add_argument("--out", default=None, help="output directory (default: runs/shapes_<name>)")
    p.add_argument("--accelerator", default=None, help="override the trainer accelerator of every run (cpu/gpu)")
    p.add_argument("--precision", default=None, help="override the trainer precision of every run (32-true, bf16-mixed)")
    p.add_argument("--smoke", type=int, nargs="?", const=2, default=None, metavar="STEPS",
                   help="check the whole pipeline at STEPS (default 2) steps per run and a few evaluation prompts: "
                        "e.g. `--preset full --smoke --accelerator cpu --precision 32-true` before a GPU run")
    branches = p.add_mutually_exclusive_group()
    branches.add_argument("--no-ablations", action="store_true", help="run the main line only (skip the file's ablations)")
    branches.add_argument("--only-ablations", action="store_true",
                          help="run the file's ablation branches only; a main-line stage a branch starts from is "
                               "taken from --out, where a main-line run (--no-ablations) left it")
    p.add_argument("--ablation", action="append", metavar="NAME",
                   help="run only this ablation branch of the file (repeat for several); with --only-ablations "
                        "the other branches' rows in --out's table are kept")
    a = p.parse_args(argv)
    if a.ablation and a.no_ablations:
        p.error("--ablation picks branches to run; --no-ablations runs none")
    path = a.config or PRESETS_DIR / f"{a.preset or 'demo'}.yaml"
    if not Path(path).is_file():
        raise SystemExit(f"pipeline file not found: {path}")
    spec, base = PipelineSpec.load(path)
    if a.smoke is not None:
        if a.smoke < 1:
            raise SystemExit(f"--smoke takes a positive number of steps, got {a.smoke}")
        spec = spec.smoke(a.smoke)
    if a.ablation:
        names = [ab["name"] for ab in spec.ablations]
        unknown = [n for n in a.ablation if n not in names]
        if unknown:
            raise SystemExit(f"--ablation: {path} has no branch {unknown}; its branches are {names}")
        spec.ablations = [ab for ab in spec.ablations if ab["name"] in a.ablation]
    if a.no_ablations:
        spec.ablations = []
    for key in ("accelerator", "precision"):  # command-line trainer overrides join the file's `trainer:`
        if getattr(a, key):
            spec.trainer = {**spec.trainer, key: getattr(a, key)}
    out = a.out or f"runs/shapes_{spec.name}"
    earlier: dict[str, Any] = {}
    if a.only_ablations:
        if not spec.ablations:
            raise SystemExit(f"--only-ablations: {path} has no ablations")
        main_line, spec.stages = {s.name for s in spec.stages}, []
        needed = {ab["from"] for ab in spec.ablations} | {s.init_from for ab in spec.ablations for s in ab["stages"]}
        lasts = {n: Path(out) / n / "checkpoints" / "last.ckpt" for n in sorted(needed & main_line)}
        missing = [n for n, last in lasts.items() if not last.is_file()]
        if missing:  # found now, not after stage 0 and the branches before it
            raise SystemExit(f"--only-ablations: branches start from the main line's {missing}, and {out} holds no "
                             "<stage>/checkpoints/last.ckpt of them: run the main line into the same --out first "
                             "(--no-ablations)")
        # the main line's rows (and those of branches not run now) stay in the table this run rewrites
        table = Path(out) / "results.json"
        old = json.loads(table.read_text()) if table.is_file() else {}
        earlier = {"earlier_checkpoints": {n: str(last) for n, last in lasts.items()},
                   "carried_rows": old.get("rows", []), "carried_step_times": old.get("step_times_ms", {})}
    pipe = Pipeline(spec, base, out, **earlier)
    pipe.log(f"ShapesWorld pipeline {spec.name!r} -> {out}  ({hardware()})")
    result = pipe.run()
    print((Path(out) / "results.md").read_text())
    return result


if __name__ == "__main__":
    main()

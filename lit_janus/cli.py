"""LightningCLI entry point (subclass mode: every config names its model and data classes).

Configs compose by stacking: `--config a.yaml --config b.yaml` applies left to right. A YAML may
also list the files it stacks on under a top-level `defaults:` key (paths relative to itself), so
`configs/janus_pro_1b/stage2.yaml` is one file to pass yet is only the model / data / trainer /
stage files it names.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI


def expand_defaults(path: str | Path, seen: tuple[Path, ...] = ()) -> list[str]:
    """The `--config` arguments a config file stands for: its `defaults` (recursively) then itself."""
    p = Path(path).resolve()
    if p in seen:
        raise ValueError(f"config {p} includes itself through `defaults`")
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict) or "defaults" not in data:
        return [str(path)]
    defaults = data.pop("defaults") or []
    if isinstance(defaults, str):
        defaults = [defaults]
    out: list[str] = []
    for d in defaults:
        out += expand_defaults(p.parent / d, seen + (p,))
    rest = yaml.safe_dump(data, sort_keys=False) if data else None
    return out + ([rest] if rest else [])  # jsonargparse takes a YAML string as well as a path


def expand_config_args(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("--config", "-c") and i + 1 < len(args):
            for c in expand_defaults(args[i + 1]):
                out += ["--config", c]
            i += 2
            continue
        if a.startswith("--config="):
            for c in expand_defaults(a.split("=", 1)[1]):
                out += ["--config", c]
        else:
            out.append(a)
        i += 1
    return out


class JanusCLI(LightningCLI):
    # what makes a run the run it is: `--ckpt_path` resumes the same run, and LightningCLI replaces the
    # parsed model arguments with the checkpoint's, so a different value here would be silently dropped
    RUN_DEFINING = ("stage", "init_from", "trainable")

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and Path(path).is_file():
            import torch

            try:
                ckpt = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
            except Exception as e:  # truncated, not a zip, not torch.save's
                raise ValueError(f"--ckpt_path {path} is not a readable Lightning checkpoint: {e}") from None
            saved = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
            ours = (self.config[sub].get("model") or {}).get("init_args") or {}
            differ = {k: (saved[k], ours.get(k)) for k in self.RUN_DEFINING if k in saved and k in ours
                      and saved[k] != ours.get(k)}
            if differ:
                said = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items())
                raise ValueError(f"--ckpt_path {path} is another run ({said}): --ckpt_path resumes the same run "
                                 "(its settings win); start a new stage from it with --model.init_args.init_from")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as e:
            # jsonargparse reports a model or data module whose __init__ raised as "Does not validate against
            # any of the Union subtypes" over a dump of the config; the error it wraps says what to fix
            cause = e.__cause__ or e.__context__
            if "Does not validate against any of the Union subtypes" in str(e) and cause is not None and not (
                    type(cause).__module__.startswith("jsonargparse")):
                raise cause from None
            raise


def _recover_ckpt_path(args: list[str]) -> None:
    """A `--ckpt_path` whose save was killed between its two renames (`lit_janus.callbacks.Checkpoint`) is
    restored before the CLI reads it (it merges the checkpoint's hyperparameters while parsing). Only in
    the first process: ranks 1..N-1 that Lightning starts later find it done; under `srun` all ranks start
    at once, so scripts/slurm_fit.sh restores it before `srun`."""
    if any(os.environ.get(v, "0") != "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        return
    for i, a in enumerate(args):
        path = a.split("=", 1)[1] if a.startswith("--ckpt_path=") else args[i + 1] if (
            a == "--ckpt_path" and i + 1 < len(args)) else None
        if path and "://" not in path and path not in ("last", "best", "hpc", "registry"):
            from lit_janus.atomic import recover_replaced

            if recover_replaced(Path(path)):
                warnings.warn(f"{path}: restored from a save that was interrupted while renaming")


def main(args: list[str] | None = None, run: bool = True, cli_class: type[JanusCLI] = JanusCLI) -> JanusCLI:
    from lit_janus.strategy import register_strategies

    register_strategies()
    # Never rewrite sys.argv: on one node with several devices, Lightning starts ranks 1..N-1 by running
    # sys.argv again, and an expanded argv (YAML text after --config) is no longer a command line that
    # names files. (LightningCLI warns when given `args` and a command line both; here they are one.)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    args = expand_config_args(sys.argv[1:] if args is None else list(args))
    _recover_ckpt_path(args)
    return cli_class(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        args=args,
        run=run,
    )

"""LightningCLI entry point (subclass mode: every config names its model and data classes)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


class JanusCLI(LightningCLI):
    pass


def main(args: list[str] | None = None) -> JanusCLI:
    from lit_janus.strategy import register_strategies

    register_strategies()
    return JanusCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        args=args,
    )

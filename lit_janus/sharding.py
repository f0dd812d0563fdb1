"""The FSDP2 sharding plan for Janus-Pro, and filling a sharded (meta-built) model with weights.

Units: every LLM decoder layer and every SigLIP layer; the root unit (the `JanusPro` module, whose
forward is the only entry point during training) keeps the embeddings, aligners, heads and the
frozen VQ. Frozen and trainable parameters may share a unit in FSDP2 (per-parameter sharding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def shard_model(model, mesh, precision: str | None = None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kw = {"mesh": mesh}
    if precision is not None and str(precision).startswith("bf16-mixed"):
        # bf16 compute with fp32 master weights and fp32 gradient reduction
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.vision.encoder.layers:
        fully_shard(layer, **kw)
    for layer in model.llm.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    # the VQ is called outside forward (on-the-fly tokenisation, sampling)
    register_fsdp_forward_method(model, "encode_images")
    register_fsdp_forward_method(model, "decode_codes")


def _random_init(model) -> None:
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
        elif hasattr(m, "variance_epsilon") and getattr(m, "weight", None) is not None:  # RMSNorm
            with torch.no_grad():
                m.weight.fill_(1.0)


def materialize_sharded(model, device: torch.device, full_state_dict: Callable[[], dict | None]) -> None:
    """Allocate the sharded meta model on `device`, then load `full_state_dict()` (transformers keys;
    read on rank 0 only and broadcast) or initialise randomly when it returns None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from lit_janus.checkpoint import init_nonpersistent_buffers

    model.to_empty(device=device)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    sd = full_state_dict() if rank0 else None
    has_weights = [sd is not None]
    if dist.is_initialized():
        dist.broadcast_object_list(has_weights, src=0)
    if has_weights[0]:
        sd = {f"janus.{k}": v for k, v in (sd or {}).items()}
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        _random_init(model)
    init_nonpersistent_buffers(model, device)

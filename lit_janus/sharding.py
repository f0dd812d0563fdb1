"""The FSDP2 sharding plan for Janus-Pro, and filling a sharded (meta-built) model with weights.

Units: every LLM decoder layer, every SigLIP layer, and the frozen VQ (gathered in float32); the root
unit (the `JanusPro` module, whose forward is the only entry point during training) keeps the
embeddings, aligners and heads. Frozen and trainable parameters may share a unit in FSDP2
(per-parameter sharding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def shard_model(model, mesh, precision: str | None = None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh}
    if precision is not None and str(precision).startswith("bf16-mixed"):
        # bf16 compute with fp32 master weights and fp32 gradient reduction
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.vision.encoder.layers:
        fully_shard(layer, **kw)
    for layer in model.llm.layers:
        fully_shard(layer, **kw)
    # The frozen VQ: its own unit, gathered in float32 whatever the compute dtype (its codes are argmins:
    # bf16 weights would move some training targets). It runs outside forward, so `JanusPro.encode_images`
    # / `decode_codes` gather it themselves.
    fully_shard(model.vq, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32))
    fully_shard(model, **kw)


def _random_init(model) -> None:
    """transformers' own initialisation (N(0, initializer_range) weights, zero biases, unit norms), the
    one an unsharded `build_model` gets: torch's `reset_parameters` would draw N(0, 1) embeddings and
    kaiming linears, so a from-scratch run would start elsewhere under FSDP2 than on one device."""
    for m in model.modules():  # construction on the meta device marked everything as initialised
        m.__dict__.pop("_is_hf_initialized", None)
    model.janus.initialize_weights()


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

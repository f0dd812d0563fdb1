"""FSDP2 for Lightning: `ModelParallelStrategy` with tensor parallelism off, registered as "fsdp2".

ModelParallelStrategy's "auto" sizes mean data-parallel = nodes and tensor-parallel = GPUs per
node, which is not what pure FSDP wants; this subclass shards over every rank instead.
The sharding plan itself (which modules become FSDP units) lives in `JanusLightning.configure_model`.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry


class FSDP2Strategy(ModelParallelStrategy):
    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def register_strategies() -> None:
    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 (fully_shard) over all ranks")

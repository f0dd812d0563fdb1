"""Data for Janus-Pro training: record sources, task streams and the ratio-mixing DataModule.

Record formats are documented in `lit_janus.data.sources`; the batch the model receives in
`lit_janus.data.datamodule`.
"""

from lit_janus.data.datamodule import JanusDataModule
from lit_janus.data.mixing import TaskRatio, merge, task_batch_sizes
from lit_janus.data.sources import (
    BadRecord, ClassFolderSource, JsonlSource, ShapesSource, Source, StreamingSource,
)
from lit_janus.data.stream import BadSampleError, TaskBatch, TaskStream
from lit_janus.data.tar_shards import WebDatasetSource

__all__ = [
    "BadRecord", "BadSampleError", "ClassFolderSource", "JanusDataModule", "JsonlSource", "ShapesSource",
    "Source", "StreamingSource", "TaskBatch", "TaskRatio", "TaskStream", "WebDatasetSource", "merge",
    "task_batch_sizes",
]

"""Wall-clock timing shared by the benchmark scripts: CUDA work is asynchronous, so synchronise
before reading the clock on both sides."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(seconds, result) of `fn()`."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def profiler(device: torch.device):
    """A torch.profiler context recording CPU ops and, on a GPU, its kernels."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []))


def kernel_table(prof, device: torch.device, rows: int = 20) -> str:
    """The busiest kernels of a finished profile (by their own device time, or CPU time without a
    GPU) as a table, headed by the kernel count and the total."""
    events = prof.key_averages()
    if device.type == "cuda":
        key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        kernels = [e for e in events if getattr(e, key, 0) > 0]
    else:
        key, kernels = "self_cpu_time_total", list(events)
    total_ms = sum(getattr(e, key) for e in kernels) / 1e3
    calls = sum(e.count for e in kernels)
    head = f"profile: {calls} {'kernel launches' if device.type == 'cuda' else 'op calls'}, {total_ms:.1f} ms in all"
    return head + "\n" + events.table(sort_by=key, row_limit=rows, max_name_column_width=70)


def profiled(fn, device: torch.device, rows: int = 20) -> str:
    """`kernel_table` of one call of `fn()`."""
    sync(device)
    with profiler(device) as prof:
        fn()
        sync(device)
    return kernel_table(prof, device, rows)

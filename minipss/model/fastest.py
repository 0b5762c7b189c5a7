"""Which number format runs fastest here: bf16 only where a bf16 product is measured faster (METHOD.md §10).

A CPU with bf16 units (AVX512-BF16, AMX) multiplies bf16 matrices several times faster than fp32 ones;
a CPU without them (AVX2 only) converts every element and runs bf16 products several times slower.
`bf16_faster` times one product of a given shape in both formats (a fraction of a second, once per
process and shape); `resolve_dtype` turns `--dtype auto` into the format to use and says why.
"""

from __future__ import annotations

import platform
import time
from functools import lru_cache

import torch

DTYPES = ("float32", "bfloat16", "float16")
ROWS = 64  # rows of the timed product: a batch of prompts' tokens, as the evaluation runs them
MAX_ELEMENTS = 1 << 22  # a wider matrix (an output head) is timed on its first columns: throughput per column
MIN_ELEMENTS = 1 << 18  # a smaller matrix is not timed: its products take microseconds, bf16 saves nothing


def product_seconds(dtype: torch.dtype, device: str, shape: tuple[int, int, int], reps: int) -> float:
    """Time of `reps` products `[rows, inner] x [inner, outer]` in `dtype` (after one warm-up)."""
    rows, inner, outer = shape
    x = torch.randn(rows, inner, device=device).to(dtype)
    w = torch.randn(outer, inner, device=device).to(dtype)
    torch.nn.functional.linear(x, w)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(x, w)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@lru_cache(maxsize=None)
def bf16_speedup(device: str, shape: tuple[int, int, int], rounds: int = 5) -> float | None:
    """How many times faster a bf16 product of `shape` (rows, inner, outer) runs than an fp32 one on
    `device`, measured once per process and shape: fp32 and bf16 alternate in `rounds` rounds of about
    30 ms of fp32 work each, and the median of the rounds' ratios counts (a machine shared with other
    work slows single timings, not the ratio of back-to-back ones). None for a matrix of fewer than
    `MIN_ELEMENTS` entries, which is not worth timing (and whose timing would be noise)."""
    rows, inner, outer = shape
    if inner * outer < MIN_ELEMENTS:
        return None
    shape = (rows, inner, max(1, min(outer, MAX_ELEMENTS // max(inner, 1))))
    for dtype in (torch.float32, torch.bfloat16):  # the first products of a process run slow: threads start
        product_seconds(dtype, device, shape, 3)
    reps = max(1, min(64, int(0.03 / max(product_seconds(torch.float32, device, shape, 3), 1e-6))))
    ratios = sorted(product_seconds(torch.float32, device, shape, reps) /
                    max(product_seconds(torch.bfloat16, device, shape, reps), 1e-9) for _ in range(rounds))
    return ratios[rounds // 2]


def bf16_faster(device, shape: tuple[int, int, int]) -> bool:
    """True when a bf16 product of `shape` (rows, inner, outer) is measured faster than fp32 on `device`."""
    speedup = bf16_speedup(str(torch.device(device)), tuple(shape))
    return speedup is not None and speedup > 1.0


def machine() -> str:
    """The processor (or GPU) in words, with the vector instructions torch uses on the CPU."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    text = f"{name}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def resolve_dtype(requested: str, device, shape: tuple[int, int]) -> tuple[str, str]:
    """The dtype to use for `--dtype requested` on `device` for a model whose MLP is `shape` (hidden,
    intermediate), and the reason: `auto` is bfloat16 on a CUDA device that supports it and on a CPU where
    a bf16 product of the MLP's shape is measured faster than fp32, float32 elsewhere (also for an MLP
    too small to time, such as a test model's; METHOD.md §10)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"--dtype {requested!r}: choose auto, {', '.join(DTYPES)}")
        return requested, "as requested"
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"auto: {torch.cuda.get_device_name(dev)} supports bf16"
        return "float32", f"auto: {torch.cuda.get_device_name(dev)} does not support bf16"
    hidden, intermediate = shape
    speedup = bf16_speedup(str(dev), (ROWS, hidden, intermediate))
    if speedup is None:
        return "float32", f"auto: an MLP of {hidden} x {intermediate} is too small for bf16 to pay"
    if speedup > 1.0:
        return "bfloat16", f"auto: bf16 product {speedup:.1f}x faster than fp32 on this CPU"
    return "float32", f"auto: bf16 product {1 / speedup:.1f}x slower than fp32 on this CPU"

"""Timing a call on CPU or GPU, and the two ceilings of the device it runs on.

GPU: the method of `triton.testing.do_bench` with CUDA events: a warm-up, then many repeats,
each on a cold L2 (a buffer twice the L2's size is overwritten before each), each timed by its
own pair of events; the median is reported. CPU: `torch.utils.benchmark.Timer`'s
blocked_autorange at the process's thread count, median of the blocks.

The ceilings (bandwidth of a large device-to-device copy, counting bytes read plus written;
arithmetic rate of a large matrix product or convolution per dtype, the faster) give each
measurement its roofline:
time_floor = max(flops / peak_flops, bytes / bandwidth).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float     # the fastest repeat (GPU) or block (CPU)
    iqr_s: float     # interquartile range of the repeats (GPU) or blocks (CPU)
    repeats: int     # timed calls


def time_call(fn, device, *, budget_s: float = 0.1, cuda_graph: bool = False) -> Timing:
    """Times `fn()` on `device`, spending about `budget_s` seconds in the timed repeats."""
    if torch.device(device).type == "cuda":
        return _time_cuda(fn, budget_s, cuda_graph)
    from torch.utils import benchmark

    fn()  # warm-up: first-call allocations, lazy initialisation
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                            num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=budget_s)
    return Timing(m.median, min(m.times), m.iqr, m.number_per_run * len(m.times))


def _cuda_graph(fn):
    """A replay of `fn` captured in a CUDA graph: the launches without Python's overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or 64 << 20)


def _time_cuda(fn, budget_s: float, cuda_graph: bool) -> Timing:
    fn()  # compiles and autotunes (Triton), creates handles (cuDNN)
    torch.cuda.synchronize()
    if cuda_graph:
        fn = _cuda_graph(fn)
    flush = torch.empty(2 * _l2_bytes() // 4, dtype=torch.int32, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_s = max(start.elapsed_time(end) / 5e3, 1e-7)
    repeats = int(min(max(budget_s / estimate_s, 10), 1000))
    for _ in range(max(1, int(0.25 * budget_s / estimate_s))):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        flush.zero_()  # a cold L2: the inputs come from device memory, as in a real network
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends))
    q = statistics.quantiles(times, n=4)
    return Timing(statistics.median(times), times[0], q[2] - q[0], repeats)


# The ceilings take the fastest repeat, not the median: a ceiling is what the device can do, and
# on a shared CPU the median of a probe is pulled down by whatever else runs.
def measure_bandwidth(device, *, budget_s: float = 0.3) -> float:
    """Bytes per second of a large copy (bytes read plus bytes written)."""
    device = torch.device(device)
    numel = (256 << 20) if device.type == "cuda" else (32 << 20)   # 1 GiB or 128 MiB of fp32
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, budget_s=budget_s)
    return 2 * src.numel() * src.element_size() / timing.min_s


def measure_peak_flops(device, dtype: torch.dtype, *, budget_s: float = 0.3) -> float:
    """Floating-point operations per second in `dtype`: the faster of a large square matrix
    product (cuBLAS / the CPU BLAS) and a large 3x3 convolution (cuDNN / oneDNN). Both are
    needed: on some CPUs (MKL on AMD) oneDNN's convolutions beat the BLAS product.

    On CUDA a float32 product uses TF32 exactly when cuDNN's convolutions may
    (torch.backends.cudnn.allow_tf32), so float32 convolutions meet the rate they can reach."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)
    n = 8192 if cuda else (512 if half else 2048)  # CPUs rarely have fast half products
    # (batch, channels, side) of the convolution probe: 2 * N * C * C * 9 * side^2 flops
    batch, channels, side = (128, 256, 56) if cuda else ((2, 64, 16) if half else (8, 256, 32))
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=gen)
    a, b = rand(n, n), rand(n, n)
    x, w = rand(batch, channels, side, side), rand(channels, channels, 3, 3) / 48
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        product = time_call(lambda: torch.mm(a, b), device, budget_s=budget_s)
        conv = time_call(lambda: torch.nn.functional.conv2d(x, w, padding=1), device,
                         budget_s=budget_s)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return max(2 * n ** 3 / product.min_s,
               2 * batch * channels ** 2 * 9 * side ** 2 / conv.min_s)


def measure_ceilings(device, dtypes, *, budget_s: float = 0.3) -> dict:
    """{"bandwidth": bytes/s, "peak_flops": {dtype name: flop/s}} measured now on `device`."""
    return {"bandwidth": measure_bandwidth(device, budget_s=budget_s),
            "peak_flops": {dtype_name(d): measure_peak_flops(device, d, budget_s=budget_s)
                           for d in dtypes}}


def best_ceilings(a: dict, b: dict) -> dict:
    """The higher of two probes of each ceiling."""
    return {"bandwidth": max(a["bandwidth"], b["bandwidth"]),
            "peak_flops": {d: max(v, b["peak_flops"][d]) for d, v in a["peak_flops"].items()}}


def roofline_floor_s(flops: float, nbytes: float, ceilings: dict, dtype) -> float:
    """The least time the work can take on this device: max(compute time, memory time)."""
    dtype = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return max(flops / ceilings["peak_flops"][dtype],
               nbytes / ceilings["bandwidth"])


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _peak_library():
    """(the extension loaded with ctypes, None) when it exports the CPU limit probes of
    kernels/cpu/peak.cpp, else (None, why not)."""
    import ctypes

    try:
        import cnnops._C as extension
    except ImportError as e:
        return None, f"the native extension is not built ({e})"
    try:
        lib = ctypes.CDLL(extension.__file__)
        for name in ("cnnops_cpu_fma_peak_gflops", "cnnops_cpu_copy_gbps"):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_double], ctypes.c_double
    except (OSError, AttributeError) as e:
        return None, f"the built extension has no CPU limit probes (rebuild it; {e})"
    return lib, None


def cpu_limits(threads: int | None = None, seconds: float = 0.25) -> dict:
    """The CPU's two hard limits at `threads` threads, measured now: the float32 FMA peak
    (a loop of independent vector FMAs: no kernel can beat it) and the copy bandwidth (bytes
    read plus written per second of a copy far larger than the caches). Both from the native
    extension's probes (kernels/cpu/peak.cpp) when it has them; otherwise the bandwidth is a
    torch copy, labelled as such, and the FMA peak is None ("n/a": Python cannot measure it)."""
    threads = threads or torch.get_num_threads()
    lib, why_not = _peak_library()
    if lib is not None:
        return {"threads": threads,
                "fma_peak_flops": lib.cnnops_cpu_fma_peak_gflops(threads, seconds) * 1e9,
                "fma_source": "cnnops._C probe: independent vector FMAs (kernels/cpu/peak.cpp)",
                "copy_bandwidth": lib.cnnops_cpu_copy_gbps(threads, seconds) * 1e9,
                "copy_source": "cnnops._C probe: memcpy of 256 MiB (kernels/cpu/peak.cpp)"}
    return {"threads": threads, "fma_peak_flops": None, "fma_source": f"n/a: {why_not}",
            "copy_bandwidth": measure_bandwidth("cpu", budget_s=seconds),
            "copy_source": f"fallback, torch copy_ of 128 MiB: {why_not}"}


def best_cpu_limits(a: dict, b: dict) -> dict:
    """The higher of two probes of each limit (a busy moment lowers one of them)."""
    best = dict(a)
    for key in ("fma_peak_flops", "copy_bandwidth"):
        values = [v for v in (a[key], b[key]) if v is not None]
        best[key] = max(values) if values else None
    return best

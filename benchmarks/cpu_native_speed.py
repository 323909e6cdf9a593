"""CPU speed of the native kernels against PyTorch's CPU kernels on the classic models' layers.

Prints a table: layer, torch ms, native ms, ratio (torch / native: > 1 means native is faster)
and, for convolutions, the fraction of the FMA peak each reaches (the peak and the copy
bandwidth are measured in the same run by kernels/cpu/peak.cpp, called through ctypes).
torch and native are timed interleaved (torch, native, torch, ...), `--rounds` rounds of
Timer.blocked_autorange each, and the median round is kept. `--clock thread` times with the
calling thread's CPU time instead (one thread only: it excludes the time the thread waits
while other processes hold the core, the dominant noise on a shared machine).
    python benchmarks/cpu_native_speed.py [--threads 2] [--only pool|conv|bwd|issue14|train]
        [--min-run 0.3] [--rounds 5] [--clock wall|thread]
"""
import argparse
import ctypes
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import cnnops  # noqa: F401  (registers torch.ops.cnnops)
import cnnops.backends.native  # noqa: F401
from cnnops.shapes import pool2d_output_hw

ops = torch.ops.cnnops

# (name, input shape, kernel, stride, padding): the classic models' pooling layers
POOLS = [
    ("lenet avg 2x2/2  6x28x28 b256", "avg", (256, 6, 28, 28), 2, 2, 0),
    ("lenet avg 2x2/2 16x10x10 b256", "avg", (256, 16, 10, 10), 2, 2, 0),
    ("resnet max 3x3/2p1 64x48x48 b32", "max", (32, 64, 48, 48), 3, 2, 1),
    ("densenet avg 2x2/2 128x24x24 b32", "avg", (32, 128, 24, 24), 2, 2, 0),
]
# (name, input shape, C_out, kernel, stride, padding)
CONVS = [
    ("lenet conv1 1->6 5x5p2 28 b256", (256, 1, 28, 28), 6, 5, 1, 2),
    ("lenet conv2 6->16 5x5 14 b256", (256, 6, 14, 14), 16, 5, 1, 0),
    ("resnet conv1 1->64 7x7/2p3 96 b32", (32, 1, 96, 96), 64, 7, 2, 3),
    ("resnet conv1 3->64 7x7/2p3 96 b32", (32, 3, 96, 96), 64, 7, 2, 3),
    ("resnet 64->64 3x3p1 24 b32", (32, 64, 24, 24), 64, 3, 1, 1),
    ("resnet 64->128 3x3/2p1 24 b32", (32, 64, 24, 24), 128, 3, 2, 1),
    ("densenet 192->128 1x1 24 b32", (32, 192, 24, 24), 128, 1, 1, 0),
]


# issue 14's forward layers (batch 8) and the LeNet / ResNet-18 layers at their training batch:
# (name, input shape, C_out, kernel, stride, padding)
ISSUE14 = [
    ("64x24x24->192 3x3p1 b8", (8, 64, 24, 24), 192, 3, 1, 1),
    ("192x12x12->32 1x1 b8", (8, 192, 12, 12), 32, 1, 1, 0),
    ("32x12x12->96 5x5p2 b8", (8, 32, 12, 12), 96, 5, 1, 2),
    ("32x6x6->128 5x5p2 b8", (8, 32, 6, 6), 128, 5, 1, 2),
    ("176x6x6->32 3x3p1 b8", (8, 176, 6, 6), 32, 3, 1, 1),
    ("resnet18 64->64 3x3p1 24 b32", (32, 64, 24, 24), 64, 3, 1, 1),
    ("resnet18 64->128 3x3/2p1 24 b32", (32, 64, 24, 24), 128, 3, 2, 1),
    ("resnet18 64->128 1x1/2 24 b32", (32, 64, 24, 24), 128, 1, 2, 0),
    ("resnet18 256->256 3x3p1 6 b32", (32, 256, 6, 6), 256, 3, 1, 1),
    ("resnet18 conv1 3->64 7x7/2p3 96 b32", (32, 3, 96, 96), 64, 7, 2, 3),
    ("lenet conv1 1->6 5x5p2 28 b256", (256, 1, 28, 28), 6, 5, 1, 2),
    ("lenet conv2 6->16 5x5 14 b256", (256, 6, 14, 14), 16, 5, 1, 0),
]

# The convolutions of one training step (issue 14's backward targets): ResNet-18 at 96x96, batch
# 32 (one row per distinct layer; the stem's input needs no gradient), and LeNet at batch 256.
# (name, input shape, C_out, kernel, stride, padding, needs grad_input)
TRAIN_LAYERS = [
    ("resnet18 conv1 1->64 7x7/2p3 96 b32", (32, 1, 96, 96), 64, 7, 2, 3, False),
    ("resnet18 64->64 3x3p1 24 b32", (32, 64, 24, 24), 64, 3, 1, 1, True),
    ("resnet18 64->128 3x3/2p1 24 b32", (32, 64, 24, 24), 128, 3, 2, 1, True),
    ("resnet18 64->128 1x1/2 24 b32", (32, 64, 24, 24), 128, 1, 2, 0, True),
    ("resnet18 128->128 3x3p1 12 b32", (32, 128, 12, 12), 128, 3, 1, 1, True),
    ("resnet18 128->256 3x3/2p1 12 b32", (32, 128, 12, 12), 256, 3, 2, 1, True),
    ("resnet18 128->256 1x1/2 12 b32", (32, 128, 12, 12), 256, 1, 2, 0, True),
    ("resnet18 256->256 3x3p1 6 b32", (32, 256, 6, 6), 256, 3, 1, 1, True),
    ("resnet18 256->512 3x3/2p1 6 b32", (32, 256, 6, 6), 512, 3, 2, 1, True),
    ("resnet18 256->512 1x1/2 6 b32", (32, 256, 6, 6), 512, 1, 2, 0, True),
    ("resnet18 512->512 3x3p1 3 b32", (32, 512, 3, 3), 512, 3, 1, 1, True),
    ("lenet conv1 1->6 5x5p2 28 b256", (256, 1, 28, 28), 6, 5, 1, 2, False),
    ("lenet conv2 6->16 5x5 14 b256", (256, 6, 14, 14), 16, 5, 1, 0, True),
]

CLOCK = {"wall": None, "thread": time.thread_time}


def limits(threads):
    """(FMA peak GFLOP/s, copy GB/s) from the extension's probes, or (None, None)."""
    try:
        import cnnops._C as ext
        lib = ctypes.CDLL(ext.__file__)
        peak, copy = lib.cnnops_cpu_fma_peak_gflops, lib.cnnops_cpu_copy_gbps
    except (ImportError, OSError, AttributeError):
        return None, None
    for fn in (peak, copy):
        fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_int, ctypes.c_double]
    return peak(threads, 0.5), copy(threads, 0.5)


def median_ms(stmt, env, min_run, clock=None):
    if clock is None:
        return Timer(stmt, globals=env, num_threads=torch.get_num_threads()).blocked_autorange(
            min_run_time=min_run).median * 1e3
    fn = eval("lambda: " + stmt, env)  # noqa: S307 (the statements are this file's own)
    fn()
    t0 = clock()
    reps = 0
    while clock() - t0 < min_run:
        fn()
        reps += 1
    return (clock() - t0) / reps * 1e3


def interleaved_ms(torch_stmt, native_stmt, env, args):
    """Median over rounds of (torch, native) timed back to back."""
    clock = CLOCK[args.clock]
    ts, ns = [], []
    for _ in range(args.rounds):
        ts.append(median_ms(torch_stmt, env, args.min_run, clock))
        ns.append(median_ms(native_stmt, env, args.min_run, clock))
    return statistics.median(ts), statistics.median(ns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("pool", "conv", "bwd", "copy", "issue14", "train"),
                        default=None)
    parser.add_argument("--min-run", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall")
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread times one thread: use --threads 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    peak, copy = limits(args.threads)
    if peak:
        print(f"FMA peak {peak:.1f} GFLOP/s, copy {copy:.1f} GB/s (read + write), "
              f"{args.threads} thread(s)")

    def add(name, torch_stmt, native_stmt, env, flops=None):
        t, n = interleaved_ms(torch_stmt, native_stmt, env, args)
        rows.append((name, t, n, flops))

    if args.only == "issue14":
        for name, shape, cout, k, s, p in ISSUE14:
            x, w, b = torch.randn(shape), torch.randn(cout, shape[1], k, k) * 0.1, torch.randn(cout)
            env = {"x": x, "w": w, "b": b, "F": F, "cnnops": cnnops, "s": s, "p": p}
            y = F.conv2d(x, w, b, s, p)
            add(name + " fwd", "F.conv2d(x, w, b, s, p)",
                "cnnops.conv2d(x, w, b, s, p, backend='native')", env,
                flops=2 * y.numel() * shape[1] * k * k)

    if args.only == "train":
        # forward, grad_input and grad_weight of every distinct training layer
        tb = ("torch.ops.aten.convolution_backward(g, x, w, [{}], s, p, [1, 1], False, "
              "[0, 0], 1, [{}, {}, False])")
        for name, shape, cout, k, s, p, grad_in in TRAIN_LAYERS:
            x, w, b = torch.randn(shape), torch.randn(cout, shape[1], k, k) * 0.1, torch.randn(cout)
            y = F.conv2d(x, w, b, s, p)
            flops = 2 * y.numel() * shape[1] * k * k
            env = {"x": x, "w": w, "b": b, "F": F, "cnnops": cnnops, "ops": ops, "torch": torch,
                   "g": torch.randn_like(y), "si": s, "pi": p, "s": [s, s], "p": [p, p]}
            add(name + " fwd", "F.conv2d(x, w, b, si, pi)",
                "cnnops.conv2d(x, w, b, si, pi, backend='native')", env, flops=flops)
            if grad_in:
                add(name + " bwd input", tb.format(cout, "True", "False"),
                    "ops.conv2d_grad_input(g, x, w, s, p, [1, 1], 1)", env, flops=flops)
            add(name + " bwd weight", tb.format(cout, "False", "True"),
                "ops.conv2d_grad_weight(g, x, w, s, p, [1, 1], 1)", env, flops=flops)

    if args.only in (None, "copy", "pool"):
        x = torch.randn(32, 64, 48, 48)
        add("copy 32x64x48x48 (GB/s as ms)", "x.clone()", "x.clone()", {"x": x})
        nbytes = x.numel() * 4 * 2
        print(f"copy bandwidth: {nbytes / (rows[-1][1] * 1e-3) / 1e9:.1f} GB/s read+write")
    if args.only in (None, "pool"):
        for name, kind, shape, k, s, p in POOLS:
            x = torch.randn(shape)
            env = {"x": x, "F": F, "ops": ops, "k": [k, k], "s": [s, s], "p": [p, p]}
            add("copy input " + name.split()[-1] + " " + "x".join(map(str, shape[1:])),
                "x.clone()", "x.clone()", env)
            # the ops take the output size from the caller (cnnops.shapes, the one size rule)
            ohw = list(pool2d_output_hw(shape[2:], [k, k], [s, s], [p, p], [1, 1], False))
            env.update(ohw=ohw, torch=torch)
            if kind == "max":
                add(name + " fwd", "F.max_pool2d(x, k, s, p)",
                    "ops.max_pool2d(x, k, s, p, [1, 1], ohw)", env)
                out, idx = F.max_pool2d(x, k, s, p, return_indices=True)
                env.update(g=torch.randn_like(out), idx=idx)
                add(name + " bwd", "torch.ops.aten.max_pool2d_with_indices_backward(g, x, k, s, p,"
                    " [1, 1], False, idx)",
                    "ops.max_pool2d_grad_input(g, x, idx, k, s, p, [1, 1])", env)
            else:
                add(name + " fwd", "F.avg_pool2d(x, k, s, p)",
                    "ops.avg_pool2d(x, k, s, p, True, None, ohw)", env)
                env["g"] = torch.randn_like(F.avg_pool2d(x, k, s, p))
                add(name + " bwd", "torch.ops.aten.avg_pool2d_backward(g, x, k, s, p, False, True,"
                    " None)", "ops.avg_pool2d_grad_input(g, x, k, s, p, True, None)", env)
    if args.only in (None, "conv", "bwd"):
        for name, shape, cout, k, s, p in CONVS:
            x = torch.randn(shape)
            w = torch.randn(cout, shape[1], k, k) * 0.1
            b = torch.randn(cout)
            env = {"x": x, "w": w, "b": b, "F": F, "ops": ops, "torch": torch,
                   "s": [s, s], "p": [p, p]}
            if args.only != "bwd":
                env.update(cnnops=cnnops, si=s, pi=p)
                add(name + " fwd", "F.conv2d(x, w, b, s, p)",
                    "cnnops.conv2d(x, w, b, si, pi, backend='native')", env,
                    flops=2 * F.conv2d(x, w, b, s, p).numel() * shape[1] * k * k)
            if args.only != "conv":
                env["g"] = torch.randn_like(F.conv2d(x, w, b, s, p))
                tb = ("torch.ops.aten.convolution_backward(g, x, w, [{}], s, p, [1, 1], False, "
                      "[0, 0], 1, [{}, {}, False])")
                if shape[1] > 1:
                    add(name + " bwd input", tb.format(cout, "True", "False"),
                        "ops.conv2d_grad_input(g, x, w, s, p, [1, 1], 1)", env)
                add(name + " bwd weight", tb.format(cout, "False", "True"),
                    "ops.conv2d_grad_weight(g, x, w, s, p, [1, 1], 1)", env)
    print(f"{'layer':48s} {'torch ms':>9s} {'native ms':>9s} {'ratio':>6s} "
          f"{'torch %peak':>11s} {'native %peak':>12s}")
    ratios = []
    for name, t, n, flops in rows:
        frac = ""
        if flops and peak:
            frac = f" {flops / t / 1e6 / peak * 100:11.1f} {flops / n / 1e6 / peak * 100:12.1f}"
        print(f"{name:48s} {t:9.3f} {n:9.3f} {t / n:6.2f}{frac}")
        if not name.startswith("copy"):
            ratios.append(t / n)
    if ratios:
        print(f"geometric mean ratio {statistics.geometric_mean(ratios):.2f} over {len(ratios)}")


if __name__ == "__main__":
    main()

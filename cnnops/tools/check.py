"""Compare every available backend with `torch`, forward and backward.

Without --fuzz: layers of the classic models at a small batch, one table row per op and
backend (max relative error forward and backward, pass/fail). With --fuzz N --seed S: N random
valid configurations per op (shapes, every option, dtypes, layouts, views); the first failing
case is printed as a `Case(...)` that `cnnops.tools.check.compare(case, backend)` replays in a test.
Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys

import torch

import cnnops

from cnnops.tools import harness
from cnnops.tools.harness import (CUDA_FLOAT32_TOLERANCE, DTYPES, OPS,  # noqa: F401 (API)
                                  TOLERANCE)


@dataclasses.dataclass
class Case:
    """One call of an op, rebuilt exactly from its fields (inputs are drawn from `seed`)."""
    op: str
    input_shape: tuple
    kwargs: dict
    weight_shape: tuple | None = None     # conv2d weight; batch_norm: (C,) when affine
    bias: bool = False                    # conv2d bias / batch_norm affine bias
    running_stats: bool = True            # batch_norm only
    dtype: str = "float64"
    layout: str = "contiguous"            # contiguous | channels_last | strided
    nan: bool = False                     # plant NaNs in the input (pooling)
    seed: int = 0
    name: str = ""

    def __repr__(self):
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if getattr(self, f.name) != f.default or f.name in ("op", "input_shape"))
        return f"Case({fields})"


def _make_inputs(case: Case, device) -> dict[str, torch.Tensor]:
    return harness.make_inputs(case.op, case.input_shape, weight_shape=case.weight_shape,
                               bias=case.bias, running_stats=case.running_stats,
                               dtype=case.dtype, layout=case.layout, device=device,
                               seed=case.seed, nan=case.nan)


def _call(case: Case, tensors: dict, backend: str):
    """Runs the op on fresh leaves; returns (outputs to compare, differentiable leaves)."""
    leaves = harness.fresh_leaves(tensors, case.layout)
    return harness.call(case.op, leaves, case.kwargs, backend), leaves


_rel_err = harness.rel_error


@dataclasses.dataclass
class Result:
    forward: float
    backward: float
    tolerance: float
    error: str = ""

    @property
    def ok(self):
        return not self.error and self.forward <= self.tolerance and self.backward <= self.tolerance


def compare(case: Case, backend: str, device="cpu") -> Result:
    """Runs `case` on `backend` and on `torch`; relative errors of outputs and gradients."""
    tol = harness.tolerance(case.dtype, device)
    tensors = _make_inputs(case, device)
    # The baseline is torch on the same values in float64: the truth every dtype is held to.
    # (It also sidesteps a crash of torch 2.13's CPU conv2d in float32 with channels-last
    # input, weight and bias, e.g. input (3, 2, 5, 1), weight (1, 2, 4, 1), stride (1, 3),
    # padding 2, dilation (1, 2).)
    want, want_leaves = harness.float64_reference(case.op, tensors, case.kwargs, case.layout)
    try:
        got, got_leaves = _call(case, tensors, backend)
    except Exception as e:  # reported as a failure with its message, not raised
        return Result(float("inf"), float("inf"), tol, f"{type(e).__name__}: {e}")
    if got[0].dtype != tensors["input"].dtype:
        return Result(float("inf"), float("inf"), tol,
                      f"output dtype {got[0].dtype}, input dtype {tensors['input'].dtype}")
    fwd = max(_rel_err(a, b) for a, b in zip(got, want))
    seed_grad = torch.Generator().manual_seed(case.seed + 1)
    grad_out = torch.randn(want[0].shape, generator=seed_grad, dtype=torch.float64)
    grad_out = grad_out.to(device=want[0].device)
    names = [k for k, v in want_leaves.items() if v.requires_grad]
    want_grads = torch.autograd.grad(want[0], [want_leaves[k] for k in names], grad_out,
                                     allow_unused=True)
    try:
        got_grads = torch.autograd.grad(got[0], [got_leaves[k] for k in names],
                                        grad_out.to(got[0].dtype), allow_unused=True)
    except Exception as e:
        return Result(fwd, float("inf"), tol, f"backward: {type(e).__name__}: {e}")
    bwd = max(_rel_err(a, b) for a, b in zip(got_grads, want_grads))
    return Result(fwd, bwd, tol)


# Layers of the classic models (cnnops.models at the book's sizes), batch 2. `small` cases are
# what slow backends (the Python loops, the Triton interpreter) run instead: same options,
# fewer channels and pixels.
def model_cases(small: bool) -> list[Case]:
    def conv(name, n, c, h, c_out, k, **kw):
        if small:
            c, h, c_out = min(c, 3), min(h, 11), min(c_out, 4)
        return Case("conv2d", (n, c, h, h), kw, weight_shape=(c_out, c, k, k), bias=True,
                    name=name)

    def pool(op, name, n, c, h, **kw):
        if small:
            c, h = min(c, 3), min(h, 12)
        return Case(op, (n, c, h, h), kw, name=name)

    def bn(name, shape, training):
        if small:
            shape = (shape[0], min(shape[1], 4)) + tuple(min(s, 8) for s in shape[2:])
        return Case("batch_norm", shape, {"training": training, "momentum": 0.1, "eps": 1e-5},
                    weight_shape=shape[1:2], bias=True, name=name)

    return [
        conv("lenet.conv1", 2, 1, 28, 6, 5, padding=2),
        conv("lenet.conv2", 2, 6, 14, 16, 5),
        conv("alexnet.conv1", 2, 1, 224 if not small else 23, 96, 11, stride=4, padding=1),
        conv("alexnet.conv3", 2, 256, 12, 384, 3, padding=1),
        conv("nin.block1.1x1", 2, 96, 54, 96, 1),
        conv("resnet.b2.conv1", 2, 64, 24, 128, 3, stride=2, padding=1),
        conv("resnet.b2.shortcut", 2, 64, 24, 128, 1, stride=2),
        conv("densenet.conv", 2, 64, 24, 32, 3, padding=1, activation="relu"),
        pool("max_pool2d", "lenet.pool (max)", 2, 6, 28, kernel_size=2, stride=2),
        pool("max_pool2d", "alexnet.pool1", 2, 96, 54, kernel_size=3, stride=2),
        pool("max_pool2d", "resnet.b1.pool", 2, 64, 48, kernel_size=3, stride=2, padding=1),
        pool("max_pool2d", "googlenet.pool", 2, 64, 24, kernel_size=3, stride=2, padding=1,
             ceil_mode=True),
        pool("avg_pool2d", "lenet.pool", 2, 6, 28, kernel_size=2, stride=2),
        pool("avg_pool2d", "densenet.transition", 2, 64, 24, kernel_size=2, stride=2),
        pool("avg_pool2d", "resnet.global", 2, 64, 3, kernel_size=3),
        bn("lenet_bn.bn1d", (4, 120), True),
        bn("resnet.bn (train)", (2, 64, 24, 24), True),
        bn("resnet.bn (eval)", (2, 64, 24, 24), False),
    ]


def _fit(rng, k, d, p):
    """An input size in which a window (k, dilation d, padding p) fits."""
    return rng.randint(max(1, d * (k - 1) + 1 - 2 * p), 13)


def fuzz_cases(op: str, count: int, seed: int) -> list[Case]:
    """`count` random valid cases of `op`, deterministic in `seed`."""
    rng = random.Random(f"{op}-{seed}")
    cases = []
    for i in range(count):
        dtype = rng.choice(["float64", "float64", "float32"])
        layout = rng.choice(["contiguous", "channels_last", "strided"])
        n = rng.randint(1, 3)
        if op == "conv2d":
            groups = rng.choice([1, 1, 1, 2, 3])
            c_in, c_out = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
            k = (rng.randint(1, 5), rng.randint(1, 5))
            d = (rng.randint(1, 2), rng.randint(1, 2))
            s = (rng.randint(1, 3), rng.randint(1, 3))
            padding = rng.choice(["int", "pair", "same", "valid"])
            if padding == "same" and s != (1, 1):
                padding = "pair"
            if padding == "int":
                padding = rng.randint(0, 2)
            elif padding == "pair":
                padding = (rng.randint(0, 2), rng.randint(0, 2))
            p = (0, 0) if isinstance(padding, str) else cnnops._validate.pair("p", padding)
            hw = (_fit(rng, k[0], d[0], p[0]), _fit(rng, k[1], d[1], p[1]))
            shape = (n, c_in) + hw
            if rng.random() < 0.1:
                shape, layout = shape[1:], "contiguous"
            kwargs = dict(stride=s, padding=padding, dilation=d, groups=groups,
                          activation=rng.choice([None, "relu"]))
            cases.append(Case(op, shape, kwargs, weight_shape=(c_out, c_in // groups) + k,
                              bias=rng.random() < 0.7, dtype=dtype, layout=layout, seed=i))
        elif op in ("max_pool2d", "avg_pool2d"):
            k = (rng.randint(1, 4), rng.randint(1, 4))
            s = None if rng.random() < 0.3 else (rng.randint(1, 5), rng.randint(1, 5))
            p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
            kwargs = dict(kernel_size=k, stride=s, padding=p, ceil_mode=rng.random() < 0.5)
            d = (1, 1)
            if op == "max_pool2d":
                d = (rng.randint(1, 2), rng.randint(1, 2))
                kwargs["dilation"] = d
            else:
                kwargs["count_include_pad"] = rng.random() < 0.5
                kwargs["divisor_override"] = rng.choice([None, None, rng.randint(1, 7)])
            shape = (n, rng.randint(1, 4), _fit(rng, k[0], d[0], p[0]), _fit(rng, k[1], d[1], p[1]))
            while True:  # redraw sizes whose dilated windows would cover only padding
                try:
                    cnnops._validate.pool2d_geometry(shape[2:], k, s, p, d, kwargs["ceil_mode"])
                    break
                except ValueError:
                    shape = shape[:2] + (_fit(rng, k[0], d[0], p[0]), _fit(rng, k[1], d[1], p[1]))
            if rng.random() < 0.1:
                shape, layout = shape[1:], "contiguous"
            cases.append(Case(op, shape, kwargs, dtype=dtype, layout=layout, seed=i,
                              nan=op == "max_pool2d" and rng.random() < 0.15))
        else:
            rank = rng.choice([2, 3, 4])
            shape = (1,)
            while shape[0] * math.prod(shape[2:]) < 8:  # fewer values per channel: the
                # float32 input gradient cancels to rounding noise, in torch as anywhere
                shape = (rng.randint(2, 9), rng.randint(1, 5)) + tuple(
                    rng.randint(1, 7) for _ in range(rank - 2))
            training = rng.random() < 0.6
            stats = not training or rng.random() < 0.8
            kwargs = dict(training=training, momentum=rng.choice([0.1, 0.3, 0.0, 1.0]),
                          eps=rng.choice([1e-5, 1e-3]))
            affine = rng.random() < 0.7
            cases.append(Case(op, shape, kwargs, weight_shape=shape[1:2] if affine else None,
                              bias=affine and rng.random() < 0.9, running_stats=stats,
                              dtype=dtype, layout=layout if rank == 4 else "contiguous", seed=i))
    return cases


SLOW_ON_CPU = ("reference", "triton")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="backends to check (default: every available one but torch)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64",
                        help="dtype of the model-layer cases (default: float64)")
    parser.add_argument("--fuzz", type=int, default=0, metavar="N",
                        help="check N random configurations per op instead of the model layers")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="fuzz seed")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    available = cnnops.available_backends(device)
    backends = args.backends or [b for b in available if b != "torch"]
    missing = [b for b in backends if b not in available]
    if missing:
        print(f"not available on {device}: {missing}", file=sys.stderr)
        for b in missing:
            reason = cnnops.get_backend(b).unavailable_reason(device)
            print(f"  {b}: {reason}", file=sys.stderr)
        return 1
    if not backends:
        print("no backend to check besides torch", file=sys.stderr)
        return 1
    failures = 0
    rows = []
    for op in args.ops:
        for backend in backends:
            if not cnnops.get_backend(backend).implements(op):
                rows.append((op, backend, 0, 0, 0.0, 0.0, "n/a (no such op)"))
                continue
            small = backend in SLOW_ON_CPU and device.type == "cpu"
            if args.fuzz:
                cases = fuzz_cases(op, args.fuzz, args.seed)
            else:
                cases = [c for c in model_cases(small) if c.op == op]
                for c in cases:
                    c.dtype = args.dtype
            if device.type == "cpu":  # half types are CUDA-only for most backends
                cases = [c for c in cases if c.dtype in ("float32", "float64")]
            fwd = bwd = 0.0
            first_failure = None
            passed = 0
            for case in cases:
                result = compare(case, backend, device)
                fwd, bwd = max(fwd, result.forward), max(bwd, result.backward)
                if result.ok:
                    passed += 1
                elif first_failure is None:
                    first_failure = (case, result)
            ok = first_failure is None
            failures += not ok
            rows.append((op, backend, len(cases), passed, fwd, bwd, "pass" if ok else "FAIL"))
            if first_failure:
                case, result = first_failure
                print(f"first failure of {op} on {backend}: forward {result.forward:.3g}, "
                      f"backward {result.backward:.3g}, tolerance {result.tolerance:g}"
                      f"{' - ' + result.error if result.error else ''}\n"
                      f"  cnnops.tools.check.compare({case!r}, {backend!r}, {str(device)!r})")
    header = ["op", "backend", "cases", "passed", "max rel err fwd", "max rel err bwd", "result"]
    table = [header] + [[r[0], r[1], str(r[2]), str(r[3]), f"{r[4]:.2e}", f"{r[5]:.2e}", r[6]]
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    mode = f"fuzz {args.fuzz}/op, seed {args.seed}" if args.fuzz else f"model layers, {args.dtype}"
    print(f"{device}, {mode}: {'all passed' if not failures else f'{failures} op/backend pairs FAILED'}")
    return 1 if failures else 0

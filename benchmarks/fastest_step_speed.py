"""One SGD training step of LeNet, LeNet-BN and ResNet-18 on backend="torch", "auto" and
"fastest", measured side by side in one process, interleaved, medians (issue 16's check).

    python benchmarks/fastest_step_speed.py [--models lenet,lenet_bn,resnet18] [--repeats 7]

"fastest" is tuned first (one eager step: every layer's key is timed), then the three backends
run the same step in turn, round after round. Prints per model the step times and the ratio
torch time / backend time (>= 0.97 is the target for fastest), and what fastest chose per op.
"""
from __future__ import annotations

import argparse
import collections
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import cnnops
from cnnops import _fastest
from cnnops.models import INPUT_SIZES, MODELS

BATCH = {"lenet": 256, "lenet_bn": 256, "resnet18": 32}


def step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def set_backend(model, backend):
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet,lenet_bn,resnet18")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{_fastest.context()}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = MODELS[name](backend="torch")
        side = INPUT_SIZES[name]
        x = torch.randn(BATCH[name], 1, side, side)
        y = torch.randint(0, 10, (BATCH[name],))
        runs = {}
        for backend in ("torch", "auto", "fastest"):
            model = copy.deepcopy(base)
            set_backend(model, backend)
            runs[backend] = (model, torch.optim.SGD(model.parameters(), lr=0.01))
        tuned = time.perf_counter()
        step(*runs["fastest"], x, y)  # times every new key
        tuned = time.perf_counter() - tuned
        for model, optimizer in runs.values():  # warm-up
            step(model, optimizer, x, y)
        samples = collections.defaultdict(list)
        for _ in range(args.repeats):
            for backend, (model, optimizer) in runs.items():
                start = time.perf_counter()
                step(model, optimizer, x, y)
                samples[backend].append(time.perf_counter() - start)
        median = {b: statistics.median(s) for b, s in samples.items()}
        print(f"\n{name}, batch {BATCH[name]}, {side}x{side} (tuning step {tuned:.2f} s)")
        for backend, t in median.items():
            print(f"  {backend:8s} {1e3 * t:9.1f} ms  torch/this {median['torch'] / t:5.2f}x")
        chosen = collections.Counter((r["op"], r["backend"]) for r in _fastest.choices())
        print("  fastest chose (op, backend: keys): "
              + ", ".join(f"{op} {b}: {n}" for (op, b), n in sorted(chosen.items())))
        _fastest.clear()


if __name__ == "__main__":
    main()

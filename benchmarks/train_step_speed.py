"""Time of one SGD step of LeNet / LeNet-BN (batch 256, 28x28 digits), torch vs native.

The fastest of 15 tries per backend, the backends taking turns, at 1 and 2 threads:
    python benchmarks/train_step_speed.py
"""
import time

import torch
from torch import nn

from cnnops.tools import data
from cnnops.models import lenet, lenet_bn


def main():
    digits = data.load("digits")
    x = data.resize(digits.train.tensors[0][:256], 28)
    y = digits.train.tensors[1][:256]

    def step(model, optimizer):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for threads in (1, 2):
        torch.set_num_threads(threads)
        for factory in (lenet, lenet_bn):
            runs = {}
            for backend in ("torch", "native"):
                torch.manual_seed(0)
                model = factory(backend=backend)  # Xavier-initialised by the factory
                runs[backend] = (model, torch.optim.SGD(model.parameters(), lr=0.1))
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(15):
                for backend, (model, optimizer) in runs.items():
                    start = time.perf_counter()
                    step(model, optimizer)
                    best[backend] = min(best[backend], time.perf_counter() - start)
            print(f"{factory.__name__:9s} threads={threads} " + "  ".join(
                f"{b}: {t * 1e3:6.1f} ms/step = {256 / t:7.0f} ex/s" for b, t in best.items())
                + f"  native/torch speed {best['torch'] / best['native']:.2f}x", flush=True)


if __name__ == "__main__":
    main()

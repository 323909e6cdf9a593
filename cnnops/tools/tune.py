"""Fill the cache of backend="fastest" for a model's layers and print what it chose.

Builds MODEL (`cnnops.models`) on backend "fastest", runs one training step (forward and
backward; `--eval`: one forward under no_grad) on a random batch at the model's book input
size, so every layer's call key is timed on every backend that can run it, then prints per
layer the backend chosen and the measured times, and writes the choices to the cache file
(--cache, else $CNNOPS_FASTEST_CACHE). Later processes with CNNOPS_FASTEST_CACHE pointing to
that file start with these choices, no timing at first call.
"""
from __future__ import annotations

import argparse
import os

import torch

import cnnops
from cnnops import _fastest

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def configure(parser: argparse.ArgumentParser) -> None:
    from cnnops.models import MODELS
    parser.add_argument("model", choices=sorted(MODELS), help="the model to tune")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true",
                        help="run the model channels-last (input and weights)")
    parser.add_argument("--eval", action="store_true",
                        help="tune inference (eval mode, no gradients) instead of a train step")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--cache", default=None,
                        help=f"the cache file to write (default: ${_fastest.CACHE_ENV})")


def run(args: argparse.Namespace) -> int:
    from cnnops.models import INPUT_SIZES, MODELS
    path = args.cache or os.environ.get(_fastest.CACHE_ENV)
    if not path:
        print(f"tune: give --cache FILE or set {_fastest.CACHE_ENV}=FILE", flush=True)
        return 2
    if os.environ.get(_fastest.CACHE_ENV) != path and os.path.exists(path):
        _fastest.load(path)  # keep the choices already in the file (the env file loads itself)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if not cnnops.available_backends(device):
        raise cnnops.BackendUnavailableError(f"no backend can run on {device} here")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = MODELS[args.model](in_channels=args.in_channels, backend="fastest")
    model = model.to(device=device, dtype=dtype, memory_format=memory_format)
    side = INPUT_SIZES[args.model]
    x = torch.randn(args.batch, args.in_channels, side, side, device=device, dtype=dtype)
    x = x.contiguous(memory_format=memory_format)
    before = _fastest.tunings
    if args.eval:
        model.eval()
        with torch.no_grad():
            report = cnnops.explain(model, x)
    else:
        model.train()
        report = cnnops.explain(model, x)
        # the backward runs the kernels the forward's choices imply: no further choice
    _fastest.save(path)
    print(f"{args.model}, batch {args.batch}, {args.dtype}, {device}, "
          f"{'eval' if args.eval else 'train step'}: {_fastest.tunings - before} new keys timed, "
          f"{len(report)} calls; cache: {path}")
    print(f"context: {_fastest.context()}")
    print(report)
    return 0

"""Train a classic CNN (LeNet ... DenseNet) the book's way (train_ch6) on any backend.

Xavier-initialised weights, plain SGD, cross-entropy; per epoch it prints the train loss,
train and test accuracy and training examples per second, and writes a JSON log and a PNG
of the curves to --out. The default data, scikit-learn's bundled digits, needs no download;
--data fashion-mnist reads the IDX files from --data-dir. Under
`torchrun --nproc_per_node=K -m cnnops train ...` it trains with DistributedDataParallel
(gloo on CPU, nccl on CUDA); --batch-size stays the global batch, and only rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import cnnops
from cnnops.tools import data as datasets
from cnnops import nn as cnn
from cnnops._dispatch import BACKEND_NAMES, resolve
from cnnops.models import MODELS
from cnnops.nn import GlobalAvgPool2d


@dataclass(frozen=True)
class Recipe:
    """The book's hyper-parameters for one model (d2l chapters 6 and 7).

    `digits_epochs` is the default on the bundled digits: 1438 training images are 6
    batches of 256, and the sigmoid LeNet needs ~500-900 SGD steps to leave its initial
    plateau (the book's 10 Fashion-MNIST epochs are 2350 steps).
    """
    lr: float
    batch_size: int
    input_size: int
    options: dict = field(default_factory=dict)
    epochs: int = 10
    digits_epochs: int = 10


RECIPES = {
    "lenet": Recipe(lr=0.9, batch_size=256, input_size=28, digits_epochs=200),
    "lenet_bn": Recipe(lr=1.0, batch_size=256, input_size=28),
    "alexnet": Recipe(lr=0.01, batch_size=128, input_size=224),
    "vgg11": Recipe(lr=0.05, batch_size=128, input_size=224, options={"ratio": 4}),
    "nin": Recipe(lr=0.1, batch_size=128, input_size=224),
    "googlenet": Recipe(lr=0.1, batch_size=128, input_size=96),
    "resnet18": Recipe(lr=0.05, batch_size=256, input_size=96),
    "densenet": Recipe(lr=0.1, batch_size=256, input_size=96),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=sorted(RECIPES),
                        help="which classic model (the book's architecture)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_NAMES,
                        help="kernels for conv, pooling and batch norm (default: auto)")
    parser.add_argument("--epochs", type=int,
                        help="default: 10, as the book; 200 for lenet on digits, whose 6 "
                             "batches an epoch are too few steps for the sigmoid LeNet")
    parser.add_argument("--lr", type=float, help="SGD learning rate (default: the book's)")
    parser.add_argument("--batch-size", type=int,
                        help="global batch size, split over processes (default: the book's)")
    parser.add_argument("--resize", type=int,
                        help="square input side (default: the book's: 28, 96 or 224)")
    parser.add_argument("--ratio", type=int,
                        help="vgg11 only: divide the channels by this (default: 4, as the book)")
    parser.add_argument("--data", choices=datasets.DATASETS,
                        help="digits (bundled with scikit-learn, the default) or fashion-mnist "
                             "(the default when --data-dir is given)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files, or with "
                                           "FashionMNIST/raw/ inside (default: ./data)")
    parser.add_argument("--limit", type=int,
                        help="use only the first N train and N test examples (a quick run)")
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="weights, shuffling, digits split")
    parser.add_argument("--out", default="runs", help="folder for the JSON log and the PNG (default: runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        record, _ = execute(args)
    except (cnnops.BackendUnavailableError, FileNotFoundError, ImportError, ValueError,
            TypeError) as e:
        print(f"cnnops train: error: {e}", file=sys.stderr)
        return 2
    if record["rank"] == 0:
        print(f"log: {record['log']}\nplot: {record['plot']}")
    return 0


def init_weights(module: nn.Module) -> None:
    """The book's Xavier init; isinstance, so that cnnops.nn.Conv2d (a subclass) gets it too."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def resolved_backends(model: nn.Module, name: str, device: torch.device) -> dict[str, str]:
    """Which backend runs each of our ops that `model` uses, for float32 on `device`."""
    ops = {cnn.Conv2d: "conv2d", cnn.MaxPool2d: "max_pool2d", cnn.AvgPool2d: "avg_pool2d",
           GlobalAvgPool2d: "avg_pool2d", cnn.BatchNorm1d: "batch_norm",
           cnn.BatchNorm2d: "batch_norm"}
    used = sorted({op for m in model.modules() for cls, op in ops.items() if isinstance(m, cls)})
    probe = {"input": torch.empty(0, device=device)}
    return {op: resolve(name, op, probe, 0).name for op in used}


def execute(args: argparse.Namespace) -> tuple[dict, nn.Module]:
    """Trains as `args` say; returns the record written to the log and the trained model."""
    recipe = RECIPES[args.model]
    lr = recipe.lr if args.lr is None else args.lr
    batch_size = recipe.batch_size if args.batch_size is None else args.batch_size
    input_size = recipe.input_size if args.resize is None else args.resize
    options = dict(recipe.options)
    if args.ratio is not None:
        if args.model != "vgg11":
            raise ValueError("--ratio applies to vgg11 only")
        options["ratio"] = args.ratio
    data_name = args.data or ("fashion-mnist" if args.data_dir else "digits")
    epochs = args.epochs if args.epochs is not None else (
        recipe.digits_epochs if data_name == "digits" else recipe.epochs)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need --epochs >= 1, --batch-size >= 1, --lr > 0; got "
                         f"{epochs}, {batch_size}, {lr}")

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(args.device, world_size)
    started_group = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started_group = True
    rank = dist.get_rank() if world_size > 1 else 0
    try:
        data = datasets.load(data_name, args.data_dir, seed=args.seed)
        if args.limit:
            data.train = Subset(data.train, range(min(args.limit, len(data.train))))
            data.test = Subset(data.test, range(min(args.limit, len(data.test))))
        if batch_size < world_size:
            raise ValueError(f"--batch-size {batch_size} is smaller than the {world_size} "
                             f"processes it is split over")
        train_loader, test_loader = _loaders(data, batch_size // world_size, args.seed, rank,
                                             world_size)

        torch.manual_seed(args.seed)
        model = MODELS[args.model](num_classes=len(data.classes), in_channels=1,
                                   backend=args.backend, **options)
        model.apply(init_weights)
        # Fails early, with the reason and the fix, when the backend cannot run here.
        backends = resolved_backends(model, args.backend, device)
        backend = "+".join(sorted(set(backends.values())))
        model.to(device)
        if world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        header = (f"training {args.model} on {data_name} ({len(data.train)} train, "
                  f"{len(data.test)} test, {input_size}x{input_size}), backend {backend}, "
                  f"{device}" + (f" x {world_size} processes" if world_size > 1 else ""))
        if rank == 0:
            print(header, flush=True)
        history = fit(model, train_loader, test_loader, epochs, lr, device, input_size,
                      show=rank == 0 and not args.quiet)
    finally:
        if started_group:
            dist.destroy_process_group()

    last = history[-1]
    total_time = sum(h["train_seconds"] for h in history)
    record = {
        "model": args.model, "options": options, "backend": backend,
        "backend_requested": args.backend, "backend_by_op": backends, "device": str(device),
        "world_size": world_size,
        "data": data_name, "train_examples": len(data.train), "test_examples": len(data.test),
        "input_size": input_size, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "seed": args.seed,
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "test_acc": last["test_acc"],
        # The book's figure: all training examples over the time spent in training steps.
        "examples_per_sec": sum(h["examples"] for h in history) / total_time,
        "history": history,
        "versions": {"cnnops": cnnops.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    stem = os.path.join(args.out, f"{args.model}-{backend}-{data_name}")
    record.update(rank=rank, log=stem + ".json", plot=stem + ".png")
    if rank == 0:
        print(f"loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}, "
              f"test acc {record['test_acc']:.3f}\n"
              f"{record['examples_per_sec']:.1f} examples/sec on {device} "
              f"(backend {backend})", flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(record["log"], "w") as f:
            json.dump({k: v for k, v in record.items() if k not in ("rank", "log", "plot")},
                      f, indent=2)
        plot_history(history, record["plot"], title=header.removeprefix("training "))
    return record, model.module if world_size > 1 else model


def fit(model, train_loader, test_loader, epochs, lr, device, input_size, show=True):
    """The book's train_ch6 loop; returns one dict of metrics per epoch (all processes')."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        # loss sum and correct predictions stay on the device, read once per epoch
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        examples = 0
        _synchronize(device)
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   leave=False, disable=not show, file=sys.stderr)
        for step, (X, y) in enumerate(bar):
            X, y = datasets.resize(X.to(device), input_size), y.to(device)
            optimizer.zero_grad()
            y_hat = model(X)
            loss = loss_fn(y_hat, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                totals[0] += loss.detach() * len(y)
                totals[1] += (y_hat.argmax(dim=1) == y).sum()
            examples += len(y)
            if show and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        _synchronize(device)
        train_seconds = time.perf_counter() - start
        bar.close()
        if dist.is_initialized():
            totals = torch.cat([totals, totals.new_tensor([examples])])
            dist.all_reduce(totals)
            totals, examples = totals[:2], int(totals[2])
            # the slowest process sets the pace of the whole job
            seconds = torch.tensor([train_seconds], dtype=torch.float64, device=device)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            train_seconds = seconds.item()
        loss_sum, correct = totals.tolist()
        test_acc = evaluate_accuracy(model, test_loader, device, input_size)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / examples,
                        "train_acc": correct / examples, "test_acc": test_acc,
                        "examples": examples, "train_seconds": train_seconds,
                        "examples_per_sec": examples / train_seconds})
        if show:
            h = history[-1]
            tqdm.write(f"epoch {h['epoch']:>3}/{epochs}: loss {h['train_loss']:.3f}, "
                       f"train acc {h['train_acc']:.3f}, test acc {h['test_acc']:.3f}, "
                       f"{h['examples_per_sec']:.1f} examples/sec", file=sys.stderr)
    return history


def evaluate_accuracy(model, loader, device, input_size) -> float:
    """Accuracy over the loader (summed over all processes when distributed)."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    module.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for X, y in loader:
            X, y = datasets.resize(X.to(device), input_size), y.to(device)
            counts[0] += (module(X).argmax(dim=1) == y).sum()
            counts[1] += len(y)
    if dist.is_initialized():
        dist.all_reduce(counts)
    correct, total = counts.tolist()
    return correct / total


def plot_history(history, path, title=""):
    """The book's animator, drawn once: train loss, train acc and test acc per epoch."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global backend

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    marker = "o" if len(epochs) <= 30 else ""
    ax.plot(epochs, [h["train_loss"] for h in history], "-" + marker, label="train loss")
    ax.plot(epochs, [h["train_acc"] for h in history], "--" + marker, label="train acc")
    ax.plot(epochs, [h["test_acc"] for h in history], "-." + marker, label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(epochs) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend()
    speed = sum(h["examples"] for h in history) / sum(h["train_seconds"] for h in history)
    ax.set_title(f"{title}\n{speed:.1f} examples/sec", fontsize=8)
    fig.savefig(path, dpi=100)


def _device(name: str | None, world_size: int) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here")
        if device.index is None:
            # one GPU per process under torchrun
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))
                                  if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _loaders(data, batch_size, seed, rank, world_size):
    """Shuffled train batches (a DistributedSampler shard per process) and test batches."""
    if world_size > 1:
        sampler = DistributedSampler(data.train, num_replicas=world_size, rank=rank,
                                     shuffle=True, seed=seed)
        train = DataLoader(data.train, batch_size=batch_size, sampler=sampler)
        # each process evaluates every world_size-th test example; counts are summed
        test_set = Subset(data.test, range(rank, len(data.test), world_size))
    else:
        train = DataLoader(data.train, batch_size=batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(seed))
        test_set = data.test
    return train, DataLoader(test_set, batch_size=batch_size)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

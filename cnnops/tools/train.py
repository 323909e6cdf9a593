"""Train a classic CNN (LeNet ... DenseNet) the book's way (train_ch6) on any backend.

Xavier-initialised weights (the models' own), plain SGD, cross-entropy; per epoch it prints
the train loss, train and test accuracy and training examples per second, and writes a JSON log
and a PNG of the curves to --out. The default data, scikit-learn's bundled digits, needs no
download; --data fashion-mnist reads the IDX files from --data-dir. Under
`torchrun --nproc_per_node=K -m cnnops train ...` it trains with DistributedDataParallel
(gloo on CPU, nccl on CUDA); --batch-size stays the global batch, and only rank 0 writes.

Checkpoints: at the end of every epoch, and at the next step boundary after Ctrl-C (a second
Ctrl-C stops at once), it writes --out/MODEL-BACKEND-DATA.ckpt (or --checkpoint PATH) atomically:
model, optimizer, epoch and step, RNG states (torch, CUDA, the shuffling generator) and the log
so far. `--resume` continues from it and reaches the same weights, bit for bit on the CPU, as a
run that was never stopped (same arguments; --epochs may grow). Under torchrun only the
end-of-epoch checkpoints are written (a stop mid-epoch would need every process to agree on
the step).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
import cnnops
from cnnops import nn as cnn
from cnnops._dispatch import BACKEND_NAMES, CHOOSERS, resolve
from cnnops.models import INPUT_SIZES, MODELS, init_weights  # noqa: F401 (init_weights: API)
from cnnops.nn import GlobalAvgPool2d
from cnnops.tools import data as datasets
from cnnops.tools import require

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """The book's hyper-parameters for one model (d2l chapters 6 and 7).

    `digits_epochs` is the default on the bundled digits: 1438 training images are 6
    batches of 256, and the sigmoid LeNet needs ~500-900 SGD steps to leave its initial
    plateau (the book's 10 Fashion-MNIST epochs are 2350 steps).
    """
    lr: float
    batch_size: int
    options: dict = field(default_factory=dict)
    epochs: int = 10
    digits_epochs: int = 10


# The input size of each model is the models package's (cnnops.models.INPUT_SIZES).
RECIPES = {
    "lenet": Recipe(lr=0.9, batch_size=256, digits_epochs=200),
    "lenet_bn": Recipe(lr=1.0, batch_size=256),
    "alexnet": Recipe(lr=0.01, batch_size=128),
    "vgg11": Recipe(lr=0.05, batch_size=128, options={"ratio": 4}),
    "nin": Recipe(lr=0.1, batch_size=128),
    "googlenet": Recipe(lr=0.1, batch_size=128),
    "resnet18": Recipe(lr=0.05, batch_size=256),
    "densenet": Recipe(lr=0.1, batch_size=256),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=sorted(RECIPES),
                        help="which classic model (the book's architecture)")
    parser.add_argument("--backend", default="auto", choices=CHOOSERS + BACKEND_NAMES,
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
    parser.add_argument("--no-plot", action="store_true", help="write no PNG of the curves")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint file (default: --out/MODEL-BACKEND-DATA.ckpt)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (same arguments; --epochs may grow)")
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint")


def run(args: argparse.Namespace) -> int:
    try:
        record, _ = execute(args)
    except (cnnops.BackendUnavailableError, FileNotFoundError, ImportError, ValueError,
            TypeError) as e:
        print(f"cnnops train: error: {e}", file=sys.stderr)
        return 2
    if record["rank"] == 0:
        if record.get("stopped"):
            print(f"stopped: {record['stopped']}; continue with the same command and --resume "
                  f"(checkpoint: {record['checkpoint']})")
            return 130
        print(f"log: {record['log']}" + (f"\nplot: {record['plot']}" if record["plot"] else ""))
        if record.get("checkpoint"):
            print(f"checkpoint: {record['checkpoint']}")
    return 130 if record.get("stopped") else 0


def resolved_backends(model: nn.Module, name: str, device: torch.device) -> dict[str, str]:
    """Which backend runs each of our ops that `model` uses, for float32 on `device`."""
    ops = {cnn.Conv2d: "conv2d", cnn.MaxPool2d: "max_pool2d", cnn.AvgPool2d: "avg_pool2d",
           GlobalAvgPool2d: "avg_pool2d", cnn.BatchNorm1d: "batch_norm",
           cnn.BatchNorm2d: "batch_norm"}
    used = sorted({op for m in model.modules() for cls, op in ops.items() if isinstance(m, cls)})
    probe = {"input": torch.empty(0, device=device)}
    if name == "fastest":  # chosen per layer at the first step; explain() lists the choices
        if not cnnops.available_backends(device):
            raise cnnops.BackendUnavailableError(f"no backend can run on {device} here")
        return {op: "fastest" for op in used}
    return {op: resolve(name, op, probe, 0).name for op in used}


def execute(args: argparse.Namespace) -> tuple[dict, nn.Module]:
    """Trains as `args` say; returns the record written to the log and the trained model."""
    recipe = RECIPES[args.model]
    lr = recipe.lr if args.lr is None else args.lr
    batch_size = recipe.batch_size if args.batch_size is None else args.batch_size
    input_size = INPUT_SIZES[args.model] if args.resize is None else args.resize
    options = dict(recipe.options)
    if args.ratio is not None:
        if args.model != "vgg11":
            raise ValueError("--ratio applies to vgg11 only")
        options["ratio"] = args.ratio
    data_name = args.data or ("fashion-mnist" if args.data_dir else "digits")
    # the tools extra: tqdm (progress), matplotlib (curves), scikit-learn (the digits)
    require("python -m cnnops train", "tqdm", *([] if args.no_plot else ["matplotlib"]),
            *(["sklearn"] if data_name == "digits" else []))
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
        # the factory initialises the weights the book's way (cnnops.models.init_weights)
        model = MODELS[args.model](num_classes=len(data.classes), in_channels=1,
                                   backend=args.backend, **options)
        # Fails early, with the reason and the fix, when the backend cannot run here.
        backends = resolved_backends(model, args.backend, device)
        backend = "+".join(sorted(set(backends.values())))
        model.to(device)
        if world_size > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        stem = os.path.join(args.out, f"{args.model}-{backend}-{data_name}")
        # What must match for a resumed run to continue the same run.
        identity = {"model": args.model, "options": options, "data": data_name,
                    "data_dir": args.data_dir, "limit": args.limit, "seed": args.seed,
                    "lr": lr, "batch_size": batch_size, "input_size": input_size,
                    "world_size": world_size, "backend_requested": args.backend}
        checkpoint = None if args.no_checkpoint else Checkpointer(
            args.checkpoint or stem + ".ckpt", identity, rank)
        if args.resume and checkpoint is None:
            raise ValueError("--resume needs a checkpoint: drop --no-checkpoint")
        resume_state = checkpoint.load(epochs) if args.resume else None

        header = (f"training {args.model} on {data_name} ({len(data.train)} train, "
                  f"{len(data.test)} test, {input_size}x{input_size}), backend {backend}, "
                  f"{device}" + (f" x {world_size} processes" if world_size > 1 else ""))
        if rank == 0:
            print(header, flush=True)
        history, stopped = fit(model, train_loader, test_loader, epochs, lr, device,
                               input_size, show=rank == 0 and not args.quiet,
                               checkpoint=checkpoint, resume=resume_state,
                               stop_on_interrupt=world_size == 1)
    finally:
        if started_group:
            dist.destroy_process_group()

    if stopped:
        return {"rank": rank, "stopped": stopped, "history": history,
                "checkpoint": checkpoint.path}, model.module if world_size > 1 else model
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
    record.update(rank=rank, log=stem + ".json", plot=None if args.no_plot else stem + ".png",
                  checkpoint=checkpoint.path if checkpoint else None)
    if rank == 0:
        print(f"loss {record['train_loss']:.3f}, train acc {record['train_acc']:.3f}, "
              f"test acc {record['test_acc']:.3f}\n"
              f"{record['examples_per_sec']:.1f} examples/sec on {device} "
              f"(backend {backend})", flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(record["log"], "w") as f:
            json.dump({k: v for k, v in record.items()
                       if k not in ("rank", "log", "plot", "checkpoint")}, f, indent=2)
        if record["plot"]:
            plot_history(history, record["plot"], title=header.removeprefix("training "))
    return record, model.module if world_size > 1 else model


class StopRequest:
    """Set by Ctrl-C (or by a caller): training stops at the next step boundary, where the
    weights and the optimizer are consistent, after writing a checkpoint."""

    def __init__(self):
        self.reason = None

    def set(self, reason: str) -> None:
        self.reason = reason


@contextlib.contextmanager
def _stop_on_interrupt(stop: StopRequest, enabled: bool):
    """Within the block the first Ctrl-C only sets `stop`; a second one interrupts at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop.set("interrupted (Ctrl-C)")
        signal.signal(signal.SIGINT, previous)
        print("\ntrain: Ctrl-C: stopping after this step and writing a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def rng_states(loader_generator=None) -> dict:
    """Every random state a training step may read: torch (CPU, CUDA), Python, NumPy, and the
    generator that shuffles the training batches."""
    np_state = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)),
                        "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                        "cached_gaussian": float(np_state[4])},
              "loader": loader_generator.get_state() if loader_generator is not None else None}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict, loader_generator=None) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    if states.get("cuda") is not None and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
    if loader_generator is not None and states["loader"] is not None:
        loader_generator.set_state(states["loader"])


class Checkpointer:
    """Writes and reads the training checkpoint: atomically (a temporary file in the same
    folder, flushed to disk, then renamed over the old one), so a stop while writing leaves the
    previous checkpoint whole. Only rank 0 writes; every process reads."""

    def __init__(self, path: str, identity: dict, rank: int = 0):
        self.path, self.identity, self.rank = path, identity, rank

    def save(self, model, optimizer, *, epoch: int, step: int, history: list,
             partial: dict | None, rng: dict) -> None:
        if self.rank != 0:
            return
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        state = {"version": CHECKPOINT_VERSION, "identity": self.identity,
                 "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                 # `epoch` epochs are complete; `step` batches of the next one are done
                 "epoch": epoch, "step": step, "partial": partial, "history": history,
                 "rng": rng}
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".tmp",
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self, epochs: int) -> dict:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"--resume: no checkpoint at {self.path} (a run with the "
                                    f"same arguments writes it; or give --checkpoint PATH)")
        # weights_only: tensors and plain containers only, nothing that runs code on load
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"--resume: {self.path} has checkpoint version "
                             f"{state.get('version')!r}, this cnnops writes "
                             f"{CHECKPOINT_VERSION}")
        differ = {k: (state["identity"].get(k), v) for k, v in self.identity.items()
                  if state["identity"].get(k) != v}
        if differ:
            raise ValueError("--resume: the checkpoint is of another run: " + ", ".join(
                f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items()))
        if state["epoch"] > epochs or (state["epoch"] == epochs and state["step"]):
            raise ValueError(f"--resume: the checkpoint is past --epochs {epochs} "
                             f"(epoch {state['epoch']}, step {state['step']})")
        return state


def fit(model, train_loader, test_loader, epochs, lr, device, input_size, show=True,
        checkpoint: Checkpointer | None = None, resume: dict | None = None,
        stop_on_interrupt: bool = True, stop: StopRequest | None = None):
    """The book's train_ch6 loop: (one dict of metrics per epoch (all processes'), the reason
    it stopped early or None). With `checkpoint`, writes one after every epoch and when
    stopped; with `resume` (a loaded checkpoint), continues where it was written."""
    from tqdm import tqdm

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    generator = train_loader.generator  # the shuffling (None under DistributedSampler)
    history, first_epoch, skip, partial = [], 0, 0, None
    if resume is not None:
        module.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        history, first_epoch = list(resume["history"]), resume["epoch"]
        skip, partial = resume["step"], resume["partial"]
        set_rng_states(resume["rng"])
        if skip:  # mid-epoch: the same shuffle as the epoch had, its first `skip` batches done
            generator.set_state(partial["loader_at_epoch_start"])
        elif generator is not None and resume["rng"]["loader"] is not None:
            generator.set_state(resume["rng"]["loader"])
    stop = stop or StopRequest()
    with _stop_on_interrupt(stop, stop_on_interrupt):
        for epoch in range(first_epoch, epochs):
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            loader_at_epoch_start = generator.get_state() if generator is not None else None
            model.train()
            # loss sum and correct predictions stay on the device, read once per epoch
            totals = torch.zeros(2, dtype=torch.float64, device=device)
            examples, train_seconds = 0, 0.0
            if partial is not None:
                totals = partial["totals"].to(device)
                examples, train_seconds = partial["examples"], partial["train_seconds"]
            _synchronize(device)
            start = time.perf_counter()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       leave=False, disable=not show, file=sys.stderr)
            for step, (X, y) in enumerate(bar):
                if step < skip:  # done before the stop this run resumes from
                    continue
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
                if stop.reason:
                    bar.close()
                    _synchronize(device)
                    if checkpoint is not None:
                        checkpoint.save(model, optimizer, epoch=epoch, step=step + 1,
                                        history=history, rng=rng_states(generator), partial={
                                            "totals": totals.cpu(), "examples": examples,
                                            "train_seconds": train_seconds
                                            + time.perf_counter() - start,
                                            "loader_at_epoch_start": loader_at_epoch_start})
                    return history, stop.reason
            skip, partial = 0, None
            _synchronize(device)
            train_seconds += time.perf_counter() - start
            bar.close()
            if dist.is_initialized():
                totals = torch.cat([totals, totals.new_tensor([examples])])
                _all_reduce(totals)
                totals, examples = totals[:2], int(totals[2])
                # the slowest process sets the pace of the whole job
                seconds = torch.tensor([train_seconds], dtype=torch.float64, device=device)
                _all_reduce(seconds, op=dist.ReduceOp.MAX)
                train_seconds = seconds.item()
            loss_sum, correct = totals.tolist()
            test_acc = evaluate_accuracy(model, test_loader, device, input_size)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / examples,
                            "train_acc": correct / examples, "test_acc": test_acc,
                            "examples": examples, "train_seconds": train_seconds,
                            "examples_per_sec": examples / train_seconds})
            if checkpoint is not None:
                checkpoint.save(model, optimizer, epoch=epoch + 1, step=0, history=history,
                                partial=None, rng=rng_states(generator))
            if show:
                h = history[-1]
                tqdm.write(f"epoch {h['epoch']:>3}/{epochs}: loss {h['train_loss']:.3f}, "
                           f"train acc {h['train_acc']:.3f}, test acc {h['test_acc']:.3f}, "
                           f"{h['examples_per_sec']:.1f} examples/sec", file=sys.stderr)
            if stop.reason:  # Ctrl-C during the evaluation: the epoch's checkpoint is written
                return history, stop.reason
    return history, None


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
    """`dist.all_reduce` that returns only once the backend has let go of `tensor`.

    Gloo runs a collective on a worker thread, which drops its references to the tensors a
    moment after `wait()` has returned. Dropping the last C++ reference to a tensor that has a
    Python object takes the GIL. With DDP, torch keeps the process group and its worker threads
    alive past `destroy_process_group` (its threads stay, counted in /proc), so when rank 1
    finishes right after
    its last all_reduce and the interpreter is already shutting down, a worker that was
    descheduled in that moment aborts the process ("terminate called without an active
    exception" from `ProcessGroupGloo::runLoop`; seen about once in 30 two-process runs on a
    loaded 2-core machine). Waiting here until the tensor's C++ use count is back to what it
    was before the collective closes that window; it costs microseconds on an idle worker.
    """
    if dist.get_backend() != "gloo" or not hasattr(tensor, "_use_count"):
        dist.all_reduce(tensor, op=op)
        return
    before = tensor._use_count()
    dist.all_reduce(tensor, op=op)
    deadline = time.monotonic() + 30.0
    while tensor._use_count() > before and time.monotonic() < deadline:
        time.sleep(1e-4)


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
        _all_reduce(counts)
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

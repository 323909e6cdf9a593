"""The layer catalogue: every distinct conv, pool and batch-norm layer of the book's eight models.

Each model is built at the input size the book trains it on (LeNet 28x28; AlexNet, VGG, NiN
224x224; GoogLeNet, ResNet, DenseNet 96x96), forward hooks on its `Conv2d`, `MaxPool2d`,
`AvgPool2d` and `BatchNorm2d` modules record what each layer is called with during one forward
pass on the meta device (shapes only, no arithmetic), and layers that are the same op with the
same per-sample input shape and options are merged.

A `Layer` also knows its arithmetic and the fewest bytes it must move: the floor any kernel for
it meets (see `flops` and `min_bytes`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cnnops.models import INPUT_SIZES

# model factory name -> the input side length the book trains it on (Fashion-MNIST, resized);
# the models package holds the one table
BOOK_INPUT_SIZE = INPUT_SIZES
MODELS = tuple(BOOK_INPUT_SIZE)
OPS = ("conv2d", "max_pool2d", "avg_pool2d", "batch_norm")
MODES = ("fwd", "fwdbwd")
INDEX_BYTES = 8  # max_pool2d keeps int64 argmax indices for its backward


@dataclass(frozen=True)
class Layer:
    """One distinct layer: an op, its per-sample input shape and its options."""

    op: str                                   # one of OPS
    in_shape: tuple[int, int, int]            # (C, H, W) of one sample
    out_shape: tuple[int, int, int]           # (C, H, W) of one sample's output
    options: tuple[tuple[str, object], ...]   # the op's arguments, sorted by name
    where: tuple[str, ...] = field(default=(), compare=False)  # "model:module.path" of each use

    @property
    def key(self):
        return (self.op, self.in_shape, self.options)

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def name(self) -> str:
        """A short readable id, e.g. 'conv2d 1x28x28->6 k5 p2'."""
        c, h, w = self.in_shape
        o = self.opts
        text = f"{self.op} {c}x{h}x{w}"
        if self.op == "conv2d":
            text += f"->{o['out_channels']}" + ("" if o["bias"] else " nobias")
        if self.op != "batch_norm":
            text += _size("k", o["kernel_size"]) + _size("s", o["stride"], 1)
            text += _size("p", o["padding"], 0) + _size("d", o.get("dilation", (1, 1)), 1)
            text += f" g{o['groups']}" if o.get("groups", 1) > 1 else ""
            text += " ceil" if o.get("ceil_mode") else ""
            text += " nopad" if o.get("count_include_pad") is False else ""
        return text

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.split(":")[0] for w in self.where))

    def flops(self, batch: int, mode: str = "fwd") -> int:
        """Floating-point operations of one call at `batch` (a multiply-add counts 2).

        conv2d: 2 per multiply-add of the forward; backward is twice that (grad input and grad
        weight); bias and activation are not counted. Pooling: one compare or add per window
        element; max_pool2d's backward one add per output. batch_norm (training): 5 per element
        forward (sum, sum of squares, scale-and-shift), 11 backward.
        """
        _check_mode(mode)
        outputs = batch * math.prod(self.out_shape)
        elements = batch * math.prod(self.in_shape)
        o = self.opts
        if self.op == "conv2d":
            kh, kw = o["kernel_size"]
            fwd = 2 * outputs * (self.in_shape[0] // o["groups"]) * kh * kw
            return fwd if mode == "fwd" else 3 * fwd
        if self.op == "batch_norm":
            return 5 * elements if mode == "fwd" else 16 * elements
        window = math.prod(o["kernel_size"]) * outputs
        if mode == "fwd":
            return window
        return window + (outputs if self.op == "max_pool2d" else window)

    def min_bytes(self, batch: int, mode: str = "fwd", itemsize: int = 4) -> int:
        """The fewest bytes one call must move: each input and weight read once, each output
        written once. The backward reads the gradient of the output and what it needs of the
        forward (the input; max_pool2d's int64 indices, which its forward then also writes) and
        writes the gradients of input and parameters."""
        _check_mode(mode)
        x = batch * math.prod(self.in_shape) * itemsize
        y = batch * math.prod(self.out_shape) * itemsize
        o = self.opts
        if self.op == "conv2d":
            kh, kw = o["kernel_size"]
            params = self.out_shape[0] * (self.in_shape[0] // o["groups"]) * kh * kw
            params = (params + (self.out_shape[0] if o["bias"] else 0)) * itemsize
            fwd = x + params + y
            return fwd if mode == "fwd" else fwd + (y + x + params) + (x + params)
        if self.op == "batch_norm":
            params = 2 * self.in_shape[0] * itemsize   # weight and bias
            fwd = x + params + y
            return fwd if mode == "fwd" else fwd + (y + x + params) + (x + params)
        if mode == "fwd":
            return x + y
        if self.op == "max_pool2d":
            indices = y // itemsize * INDEX_BYTES
            return (x + y + indices) + (y + indices + x)
        return (x + y) + (y + x)


def _size(prefix: str, pair, skip=None) -> str:
    if skip is not None and tuple(pair) == (skip, skip):
        return ""
    return f" {prefix}{pair[0]}" if pair[0] == pair[1] else f" {prefix}{pair[0]}x{pair[1]}"


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _options(module: nn.Module) -> tuple[str, dict] | None:
    """(op, options) of a module the catalogue covers, else None."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):  # "same" / "valid": the explicit symmetric padding
            padding = tuple((d * (k - 1)) // 2 if padding == "same" else 0
                            for k, d in zip(module.kernel_size, module.dilation))
        return "conv2d", dict(out_channels=module.out_channels,
                              kernel_size=_pair(module.kernel_size), stride=_pair(module.stride),
                              padding=_pair(padding), dilation=_pair(module.dilation),
                              groups=module.groups, bias=module.bias is not None)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)
        stride = kernel if module.stride in (None, ()) else _pair(module.stride)
        opts = dict(kernel_size=kernel, stride=stride, padding=_pair(module.padding),
                    ceil_mode=bool(module.ceil_mode))
        if isinstance(module, nn.MaxPool2d):
            return "max_pool2d", dict(opts, dilation=_pair(module.dilation))
        return "avg_pool2d", dict(opts, count_include_pad=bool(module.count_include_pad),
                                  divisor_override=module.divisor_override)
    if isinstance(module, nn.BatchNorm2d):
        return "batch_norm", dict(eps=float(module.eps), affine=bool(module.affine))
    return None


def model_layers(model_name: str, model: nn.Module, size: int, in_channels: int = 1,
                 device="meta") -> list[Layer]:
    """Every covered layer call of one forward of `model` on a (1, C, size, size) input.

    On the meta device only shapes flow ("auto" resolves to the torch backend there); pass
    device="cpu" to run the arithmetic instead."""
    calls: list[Layer] = []

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        op, opts = _options(module)
        calls.append(Layer(op, tuple(args[0].shape[1:]), tuple(out.shape[1:]),
                           tuple(sorted(opts.items())), (f"{model_name}:{paths[module]}",)))

    paths = {m: name for name, m in model.named_modules() if _options(m) is not None}
    handles = [m.register_forward_hook(hook) for m in paths]
    try:
        import cnnops
        with torch.no_grad(), cnnops.use_backend("auto"):
            model.to(device).eval()(torch.empty(1, in_channels, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return calls


def dedupe(calls) -> list[Layer]:
    """Merges layers with the same op, shape and options, keeping first-seen order."""
    merged: dict = {}
    for layer in calls:
        if layer.key in merged:
            first = merged[layer.key]
            merged[layer.key] = Layer(first.op, first.in_shape, first.out_shape, first.options,
                                      first.where + layer.where)
        else:
            merged[layer.key] = layer
    return list(merged.values())


def catalogue(models=MODELS, ops=OPS) -> list[Layer]:
    """The distinct layers of `models` (names from MODELS) whose op is in `ops`."""
    unknown = [m for m in models if m not in BOOK_INPUT_SIZE]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected names from {MODELS}")
    return [layer for layer in _catalogue(tuple(models)) if layer.op in ops]


@functools.lru_cache(maxsize=8)
def _catalogue(models: tuple[str, ...]) -> tuple[Layer, ...]:
    from cnnops import models as factories

    calls = []
    for name in models:
        def build():
            return getattr(factories, name)(num_classes=10, in_channels=1, backend=None)
        try:
            with torch.device("meta"):  # parameters on meta: no memory, no random init
                model = build()
            calls += model_layers(name, model, BOOK_INPUT_SIZE[name])
        except (RuntimeError, TypeError, NotImplementedError):
            # an op that cannot run on meta tensors: one real forward of a batch of one
            calls += model_layers(name, build(), BOOK_INPUT_SIZE[name], device="cpu")
    return tuple(dedupe(calls))


def spread(layers, count: int, batch: int = 1) -> list[Layer]:
    """`count` layers of one op spread evenly over the range of work (by flops), smallest to
    largest; all of them when count <= 0 or there are no more."""
    if count <= 0 or len(layers) <= count:
        return list(layers)
    ranked = sorted(layers, key=lambda layer: layer.flops(batch))
    picks = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)}
                   if count > 1 else {len(ranked) // 2})
    chosen = {ranked[i].key for i in picks}
    return [layer for layer in layers if layer.key in chosen]

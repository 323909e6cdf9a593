"""`cnnops.explain(model, *inputs)`: which backend ran each cnnops call of a model, and why."""
from __future__ import annotations

import torch
from torch import nn

from cnnops import _dispatch


class Explanation(list):
    """One dict per cnnops call: module, layer, op, requested, backend, why. Prints as a table."""

    def __str__(self) -> str:
        if not self:
            return "(no cnnops call)"
        header = ("module", "layer", "op", "requested", "backend", "why")
        rows = [header] + [tuple(str(r[h]) for h in header) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]
                         for row in rows)


def explain(model: nn.Module, *inputs, **kwargs) -> Explanation:
    """Runs `model(*inputs, **kwargs)` once, as it is (mode, grad mode), and lists for every
    cnnops call the module that made it, the backend name it asked for, the backend that ran
    and why ("named", the auto order and what it skipped, or fastest's timings). With
    `backend="fastest"` a call key not seen before is timed during this run.
    """
    if _dispatch._recorder is not None:
        raise RuntimeError("cnnops.explain is already running (no nesting)")
    names = {module: name or type(module).__name__ for name, module in model.named_modules()}
    stack: list[nn.Module] = []
    handles = []

    def enter(module, _inputs):
        stack.append(module)

    def leave(_module, _inputs, _output):  # returns None: the output is left as it is
        stack.pop()

    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    records = Explanation()

    class Recorder(list):  # what dispatch appends to: each record gets the module running now
        def append(self, record):
            module = stack[-1] if stack else model
            records.append({"module": names.get(module, ""), "layer": type(module).__name__,
                            **record})

    _dispatch._recorder = Recorder()
    try:
        model(*inputs, **kwargs)
    finally:
        _dispatch._recorder = None
        for handle in handles:
            handle.remove()
    return records


__all__ = ["explain", "Explanation"]

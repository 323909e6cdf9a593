"""`cnnops.convert`: swap torch.nn layers in a model for their cnnops.nn counterparts."""
import copy

from torch import nn

_COUNTERPARTS = {}


def _counterparts():
    if not _COUNTERPARTS:
        from cnnops import nn as cnn
        _COUNTERPARTS.update({nn.Conv2d: cnn.Conv2d, nn.MaxPool2d: cnn.MaxPool2d,
                              nn.AvgPool2d: cnn.AvgPool2d, nn.BatchNorm2d: cnn.BatchNorm2d,
                              nn.BatchNorm1d: cnn.BatchNorm1d})
    return _COUNTERPARTS


def _swap(module: nn.Module, backend) -> nn.Module:
    """The cnnops twin of `module` sharing its parameters, buffers, hooks and mode."""
    cls = _counterparts().get(type(module))  # exact type: user subclasses are left alone
    if cls is None:
        return module
    twin = cls.__new__(cls)
    twin.__dict__.update(module.__dict__)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    twin.backend = backend
    return twin


def convert(module: nn.Module, backend=None, inplace: bool = False) -> nn.Module:
    """Returns `module` with every exact nn.Conv2d / MaxPool2d / AvgPool2d / BatchNorm2d /
    BatchNorm1d (the top-level module included) replaced by its cnnops.nn counterpart.

    Weights, buffers and training/eval mode carry over. `inplace=False` converts a deep copy
    and leaves `module` untouched; `inplace=True` swaps the children of `module` itself.
    """
    if backend is not None:
        from cnnops._dispatch import check_backend_name
        check_backend_name(backend)
    if not inplace:
        module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None:
                parent._modules[name] = _swap(child, backend)
    return _swap(module, backend)

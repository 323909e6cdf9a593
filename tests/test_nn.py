"""cnnops.nn layers and cnnops.convert: drop-in for torch.nn, weights both ways, same function."""
import pytest
import torch
from torch import nn

import cnnops
import cnnops.nn as cnn

BACKENDS = ["torch"] + [b for b in cnnops.available_backends("cpu") if b != "torch"]
SMALL = {"reference", "triton"}  # slow backends get smaller inputs

PAIRS = [
    (nn.Conv2d, cnn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)),
    (nn.Conv2d, cnn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=(3, 2), stride=2,
                                 padding=(1, 1), dilation=(1, 2), groups=2, bias=False)),
    (nn.Conv2d, cnn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=3, padding=1,
                                 padding_mode="reflect")),
    (nn.Conv2d, cnn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=4, padding="same",
                                 padding_mode="circular")),
    (nn.MaxPool2d, cnn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (nn.AvgPool2d, cnn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1,
                                       count_include_pad=False, ceil_mode=True)),
    (nn.AvgPool2d, cnn.AvgPool2d, dict(kernel_size=2, divisor_override=3)),
]


def _input(shape, backend, seed=0):
    g = torch.Generator().manual_seed(seed)
    if backend in SMALL:
        shape = shape[:2] + tuple(min(s, 7) for s in shape[2:])
    return torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_cls,cnn_cls,kwargs", PAIRS)
def test_layer_matches_torch_and_shares_state_dict(backend, torch_cls, cnn_cls, kwargs):
    torch.manual_seed(0)
    ref = torch_cls(**kwargs).double()
    ours = cnn_cls(**kwargs, backend=backend).double()
    assert isinstance(ours, torch_cls)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = _input((2, kwargs.get("in_channels", 3), 9, 9), backend)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(xr), ours(xo)
    torch.testing.assert_close(got, want)
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")
    ref.load_state_dict(ours.state_dict())  # and back


def test_max_pool_layer_return_indices():
    x = torch.randn(2, 3, 8, 8)
    out, idx = cnn.MaxPool2d(2, return_indices=True)(x)
    want, want_idx = nn.MaxPool2d(2, return_indices=True)(x)
    torch.testing.assert_close(out, want)
    assert torch.equal(idx, want_idx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum,track", [(0.1, True), (None, True), (0.3, False)])
@pytest.mark.parametrize("cls_pair,shape", [((nn.BatchNorm2d, cnn.BatchNorm2d), (4, 3, 5, 5)),
                                             ((nn.BatchNorm1d, cnn.BatchNorm1d), (6, 3)),
                                             ((nn.BatchNorm1d, cnn.BatchNorm1d), (4, 3, 7))])
def test_batch_norm_layers_train_and_eval(backend, momentum, track, cls_pair, shape):
    torch_cls, cnn_cls = cls_pair
    ref = torch_cls(3, momentum=momentum, track_running_stats=track).double()
    ours = cnn_cls(3, momentum=momentum, track_running_stats=track, backend=backend).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = _input(shape, backend, seed=step)
        torch.testing.assert_close(ours(x), ref(x))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, msg=lambda m: f"{key}: {m}")
    ref.eval()
    ours.eval()
    x = _input(shape, backend, seed=9)
    torch.testing.assert_close(ours(x), ref(x))


def test_batch_norm_layer_rejects_wrong_rank():
    with pytest.raises(ValueError):
        cnn.BatchNorm2d(3)(torch.randn(4, 3))


class MyConv(nn.Conv2d):
    """A user subclass: convert must leave it alone."""


def _model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        MyConv(4, 4, 1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6))


def test_convert_replaces_exact_types_and_keeps_function():
    torch.manual_seed(0)
    model = _model().double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    want = model(x)
    converted = cnnops.convert(model, backend="torch")
    kinds = [type(m) for m in converted]
    assert kinds[:2] == [cnn.Conv2d, cnn.BatchNorm2d]
    assert kinds[3] is cnn.MaxPool2d and kinds[4] is MyConv and kinds[5] is cnn.AvgPool2d
    assert kinds[8] is cnn.BatchNorm1d
    assert all(m.backend == "torch" for m in converted if hasattr(m, "backend"))
    assert type(model[0]) is nn.Conv2d, "inplace=False must leave the original untouched"
    assert not converted.training
    torch.testing.assert_close(converted(x), want)
    assert converted.state_dict().keys() == model.state_dict().keys()
    model.load_state_dict(converted.state_dict())


def test_convert_inplace_and_top_level_module():
    model = _model().train()
    same = cnnops.convert(model, inplace=True)
    assert same is model and type(model[0]) is cnn.Conv2d and model.training
    conv = nn.Conv2d(2, 3, 3)
    top = cnnops.convert(conv)
    assert type(top) is cnn.Conv2d and top is not conv
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(top(x), conv(x))
    top.weight.data.add_(1)  # the copy owns its weights
    assert not torch.equal(top.weight, conv.weight)


def test_convert_rejects_unknown_backend():
    with pytest.raises(ValueError, match="nope"):
        cnnops.convert(_model(), backend="nope")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_model_compiles_fullgraph_through_the_dispatcher(backend):
    torch.manual_seed(0)
    model = nn.Sequential(cnn.Conv2d(1, 4, 3, padding=1), cnn.BatchNorm2d(4), nn.ReLU(),
                          cnn.MaxPool2d(2), cnn.AvgPool2d(2))
    x = torch.randn(2, 1, 8, 8)
    with cnnops.use_backend(backend):
        want = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = compiled(x)
        got.sum().backward()
    torch.testing.assert_close(got, want)
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls_pair,shape", [((nn.BatchNorm2d, cnn.BatchNorm2d), (0, 3, 4, 4)),
                                            ((nn.BatchNorm1d, cnn.BatchNorm1d), (0, 3)),
                                            ((nn.BatchNorm1d, cnn.BatchNorm1d), (0, 3, 5))])
def test_batch_norm_empty_batch_in_training_is_torchs(backend, cls_pair, shape):
    """The last, empty batch of a data loader: torch returns an empty output, leaves the
    running stats alone (num_batches_tracked still counts it) and gives zero gradients."""
    torch.manual_seed(0)
    ref = cls_pair[0](3).double()
    with torch.no_grad():
        ref.running_mean.uniform_(-1, 1)
        ref.running_var.uniform_(0.5, 2)
    ours = cls_pair[1](3, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    x_ref = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x_ours = x_ref.detach().clone().requires_grad_()
    want, got = ref(x_ref), ours(x_ours)
    assert got.shape == want.shape == shape and got.dtype == want.dtype
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    want.sum().backward()
    got.sum().backward()
    assert x_ours.grad is not None and x_ours.grad.shape == shape
    for p_ours, p_ref in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p_ours.grad, p_ref.grad) and not p_ours.grad.any()

"""Every bad input raises ValueError, TypeError or RuntimeError naming the argument and value,
on every backend (validation runs before dispatch)."""
import pytest
import torch

import cnnops

ALL = ["torch"] + [b for b in cnnops.available_backends("cpu") if b != "torch"]
x = torch.randn(2, 3, 8, 8)
w = torch.randn(4, 3, 3, 3)

BAD_CONV = [
    (dict(input=torch.randn(8, 8)), ValueError, "input"),
    (dict(input=torch.randn(1, 2, 3, 8, 8)), ValueError, "input"),
    (dict(input=torch.randint(0, 5, (2, 3, 8, 8))), TypeError, "input"),
    (dict(weight=torch.randn(4, 3, 3)), ValueError, "weight"),
    (dict(weight=torch.randn(4, 2, 3, 3)), ValueError, "channels"),
    (dict(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), TypeError, "weight"),
    (dict(bias=torch.randn(5)), ValueError, "bias"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, -2)), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding="same", stride=2), ValueError, "same"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=2), ValueError, "groups"),
    (dict(weight=torch.randn(4, 3, 9, 9)), ValueError, "kernel_size"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(activation="gelu"), ValueError, "activation"),
    (dict(input=torch.randn(2, 3, 0, 8)), ValueError, "input"),
    (dict(input=torch.randn(2, 3, 8, 8, device="meta")), RuntimeError, "device"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bad,error,word", BAD_CONV, ids=[f"conv-{i}" for i in range(len(BAD_CONV))])
def test_conv2d_bad_input(backend, bad, error, word):
    args = dict(input=x, weight=w, bias=None)
    args.update(bad)
    with pytest.raises(error, match=word):
        cnnops.conv2d(**args, backend=backend)


BAD_POOL = [
    (dict(input=torch.randn(8, 8)), ValueError, "input"),
    (dict(input=torch.randint(0, 5, (2, 3, 8, 8))), TypeError, "input"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(2, 2, 2)), TypeError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(kernel_size=3, padding=2), ValueError, "half of kernel_size"),
    (dict(kernel_size=9), ValueError, "larger than the padded input"),
    (dict(kernel_size="2"), TypeError, "kernel_size"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("bad,error,word", BAD_POOL, ids=[f"pool-{i}" for i in range(len(BAD_POOL))])
def test_pool_bad_input(backend, op, bad, error, word):
    args = dict(input=x, kernel_size=2)
    args.update(bad)
    with pytest.raises(error, match=word):
        getattr(cnnops, op)(**args, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_max_pool_bad_dilation_and_avg_bad_divisor(backend):
    with pytest.raises(ValueError, match="dilation"):
        cnnops.max_pool2d(x, 2, dilation=0, backend=backend)
    with pytest.raises(ValueError, match="divisor_override"):
        cnnops.avg_pool2d(x, 2, divisor_override=0, backend=backend)


BAD_BN = [
    (dict(input=torch.randn(4)), ValueError, "input"),
    (dict(input=torch.randint(0, 3, (4, 3))), TypeError, "input"),
    (dict(running_mean=torch.zeros(4)), ValueError, "running_mean"),
    (dict(weight=torch.ones(2)), ValueError, "weight"),
    (dict(bias=torch.ones(3, 1)), ValueError, "bias"),
    (dict(running_mean=None, running_var=None, training=False), ValueError, "training=False"),
    (dict(running_var=None), ValueError, "together"),
    (dict(input=torch.randn(1, 3), training=True), ValueError, "more than 1 value"),
    (dict(eps=-1.0), ValueError, "eps must be non-negative"),
    # torch: eps must be positive in training (eps = 0 divides a constant channel by zero)
    (dict(eps=0.0, training=True), ValueError, "eps must be positive during training"),
    (dict(eps=-1e-5, training=True), ValueError, "eps must be positive during training"),
    (dict(eps="1e-5"), TypeError, "eps"),
    # torch's dtype rule: per-channel tensors share one dtype, the input's (float32 allowed
    # only for float16 / bfloat16 input)
    (dict(weight=torch.ones(3, dtype=torch.float64)), TypeError, "weight.*float64.*float32"),
    (dict(running_mean=torch.zeros(3, dtype=torch.float64),
          running_var=torch.ones(3, dtype=torch.float64)), TypeError, "running_mean.*float64"),
    (dict(weight=torch.ones(3), bias=torch.zeros(3, dtype=torch.float64)), TypeError,
     "bias has dtype torch.float64 but running_mean"),
    (dict(input=torch.randn(4, 3, dtype=torch.float64)), TypeError, "input has dtype torch.float64"),
    (dict(input=torch.randn(4, 3).bfloat16(), running_mean=torch.zeros(3, dtype=torch.float64),
          running_var=torch.ones(3, dtype=torch.float64)), TypeError, "float64"),
    (dict(input=torch.randn(4, 3).bfloat16(), running_var=torch.ones(3).bfloat16()), TypeError,
     "running_var has dtype torch.bfloat16 but running_mean has dtype torch.float32"),
    (dict(running_mean=torch.zeros(3, device="meta")), RuntimeError, "running_mean"),
]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bad,error,word", BAD_BN, ids=[f"bn-{i}" for i in range(len(BAD_BN))])
def test_batch_norm_bad_input(backend, bad, error, word):
    args = dict(input=torch.randn(4, 3), running_mean=torch.zeros(3), running_var=torch.ones(3),
                training=False)
    args.update(bad)
    with pytest.raises(error, match=word):
        cnnops.batch_norm(**args, backend=backend)


def test_unknown_backend_names():
    with pytest.raises(ValueError, match="xyz"):
        cnnops.conv2d(x, w, backend="xyz")
    with pytest.raises(ValueError, match="xyz"):
        with cnnops.use_backend("xyz"):
            pass


def test_use_backend_sets_and_restores_the_default(monkeypatch):
    seen = []
    torch_backend = cnnops.get_backend("torch")
    original = type(torch_backend).conv2d

    def spy(self, *args):
        seen.append("torch")
        return original(self, *args)

    monkeypatch.setattr(type(torch_backend), "conv2d", spy)
    with cnnops.use_backend("torch"):
        cnnops.conv2d(x, w)
    assert seen == ["torch"]
    with cnnops.use_backend("auto"):
        cnnops.conv2d(x, w)  # auto on CPU: native if built, else torch


def test_backend_without_the_dtype_raises_type_error_naming_takers():
    native = cnnops.get_backend("native")
    if native.unavailable_reason(torch.device("cpu")) is not None:
        with pytest.raises(cnnops.BackendUnavailableError, match="native"):
            cnnops.conv2d(x, w, backend="native")
        return
    with pytest.raises(TypeError, match="float16.*torch"):
        cnnops.conv2d(x.half(), w.half(), backend="native")
    assert cnnops.conv2d(x.half(), w.half()).dtype == torch.float16  # auto picks a taker


def test_backend_unavailable_error_is_a_runtime_error():
    assert issubclass(cnnops.BackendUnavailableError, RuntimeError)


def test_max_pool_window_that_covers_only_padding_is_refused():
    # PyTorch gives -inf and an out-of-plane index here, and its backward writes out of bounds
    with pytest.raises(ValueError, match="covers no input element"):
        cnnops.max_pool2d(torch.randn(2, 1, 7, 1), (2, 2), padding=(1, 1), dilation=(1, 2))
    with pytest.raises(ValueError, match="covers no input element"):
        cnnops.pool2d_output_shape((7, 1), (2, 2), padding=(1, 1), dilation=(1, 2))


@pytest.mark.parametrize("backend", ALL)
def test_batch_norm_eps_zero_is_fine_in_eval(backend):
    args = (torch.randn(4, 3), torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(cnnops.batch_norm(*args, eps=0.0, backend=backend),
                               torch.nn.functional.batch_norm(*args, eps=0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_norm_low_precision_input_takes_float32_params_as_torch(dtype):
    x = torch.randn(4, 3, 5).to(dtype)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    for training in (True, False):
        for backend in [n for n in ALL if cnnops.get_backend(n).supports_dtype(x.device, dtype)]:
            stats, want_stats = [torch.zeros(3), torch.ones(3)], [torch.zeros(3), torch.ones(3)]
            got = cnnops.batch_norm(x, *stats, w, b, training, backend=backend)
            want = torch.nn.functional.batch_norm(x, *want_stats, w, b, training)
            assert got.dtype == dtype, backend
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(stats, want_stats)


def test_batch_norm_layer_rank_is_checked_in_the_validation_layer():
    with pytest.raises(ValueError, match=r"BatchNorm2d expects 4-D input, got 3-D"):
        cnnops.nn.BatchNorm2d(3)(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match=r"BatchNorm1d expects 2-D or 3-D input, got 4-D"):
        cnnops.nn.BatchNorm1d(3)(torch.randn(2, 3, 4, 4))


OWN_FILES = ["cnnops/functional.py", "cnnops/nn.py", "cnnops/convert.py", "cnnops/reference.py",
             "cnnops/backends/reference.py", "cnnops/backends/torch.py"]


@pytest.mark.parametrize("path", OWN_FILES)
def test_user_facing_errors_are_raised_only_in_the_validation_layer(path):
    """The one validation layer: the public ops, layers and the reference / torch backends
    raise no ValueError / TypeError of their own (user input is checked in _validate.py)."""
    import ast
    import pathlib
    tree = ast.parse((pathlib.Path(__file__).parent.parent / path).read_text())
    raised = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise)
              and node.exc is not None and "Error" in ast.unparse(node.exc)
              and any(e in ast.unparse(node.exc) for e in ("ValueError", "TypeError"))]
    assert raised == [], f"{path} raises ValueError / TypeError at lines {raised}"

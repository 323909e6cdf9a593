"""backend="fastest": per call key, the backend measured fastest, checked against torch first."""
import json

import pytest
import torch

import cnnops
from cnnops import _dispatch, _fastest


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(_fastest.CACHE_ENV, raising=False)
    # what is tested here is the choosing, not the clock: few, short repeats
    monkeypatch.setattr(_fastest, "_TIME_BUDGET_S", 0.005)
    monkeypatch.setattr(_fastest, "_MAX_REPEATS", 3)
    _fastest.clear()
    yield
    _fastest.clear()


def conv_args(n=2, c=3, hw=10, dtype=torch.float64, grad=False):
    x = torch.randn(n, c, hw, hw, dtype=dtype, requires_grad=grad)
    w = torch.randn(4, c, 3, 3, dtype=dtype, requires_grad=grad)
    return x, w


def test_fastest_is_a_backend_name_everywhere():
    x, w = conv_args()
    expected = torch.nn.functional.conv2d(x, w, padding=1)
    torch.testing.assert_close(cnnops.conv2d(x, w, padding=1, backend="fastest"), expected)
    with cnnops.use_backend("fastest"):
        torch.testing.assert_close(cnnops.conv2d(x, w, padding=1), expected)
    layer = cnnops.nn.Conv2d(3, 4, 3, backend="fastest")
    assert layer(torch.randn(1, 3, 6, 6)).shape == (1, 4, 4, 4)
    model = cnnops.convert(torch.nn.Sequential(torch.nn.MaxPool2d(2)), backend="fastest")
    assert model(torch.randn(1, 2, 4, 4)).shape == (1, 2, 2, 2)
    assert cnnops.models.lenet(backend="fastest")(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_choice_is_cached_and_reused_without_timing():
    x, w = conv_args()
    first = cnnops.conv2d(x, w, backend="fastest")
    tuned = _fastest.tunings
    second = cnnops.conv2d(x, w, backend="fastest")
    assert _fastest.tunings == tuned, "the second call with the same key timed again"
    assert torch.equal(first, second)
    (row,) = _fastest.choices()
    assert row["backend"] in cnnops.available_backends("cpu") and row["backend"] != "reference"
    assert "torch" in row["times_ms"]


def test_keys_separate_shape_dtype_layout_and_grad_mode():
    x, w = conv_args()
    start = _fastest.tunings
    cnnops.conv2d(x, w, backend="fastest")
    variants = [
        conv_args(hw=12),                                              # shape
        conv_args(dtype=torch.float32),                                # dtype
        tuple(t.contiguous(memory_format=torch.channels_last) for t in conv_args()),  # layout
        conv_args(grad=True),                                          # gradients needed
    ]
    for i, (xv, wv) in enumerate(variants, start=2):
        cnnops.conv2d(xv, wv, backend="fastest")
        assert _fastest.tunings - start == i
    # the tensors that need grad, under no_grad: the key of the first call again
    xg, wg = variants[-1]
    with torch.no_grad():
        cnnops.conv2d(xg, wg, backend="fastest")
    assert _fastest.tunings - start == len(variants) + 1
    keys = {tuple(r[k] for k in ("dtype", "shapes", "needs_grad")) for r in _fastest.choices()}
    assert len(keys) == len(variants) + 1


def test_a_backend_that_differs_from_torch_is_never_chosen(monkeypatch):
    native = _dispatch._load()["native"]
    if "native" not in cnnops.available_backends("cpu"):
        pytest.skip("native not built")
    # a native conv that is much faster and wrong must lose to a correct one
    wrong = lambda self, input, *a: torch.zeros(1)  # noqa: E731
    broken = lambda self, input, *a: (_ for _ in ()).throw(RuntimeError("kernel crashed"))  # noqa
    for fake, reason in ((wrong, "differs from torch"), (broken, "raised RuntimeError")):
        _fastest.clear()
        monkeypatch.setattr(type(native), "conv2d", fake)
        x, w = conv_args()
        out = cnnops.conv2d(x, w, backend="fastest")
        torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w))
        (row,) = _fastest.choices()
        assert row["backend"] == "torch"
        assert reason in row["rejected"]["native"]


def test_timing_leaves_running_stats_and_rng_alone():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    stats = {b: (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
             for b in ("torch", "fastest")}
    torch.manual_seed(1)
    for backend, (mean, var) in stats.items():
        cnnops.batch_norm(x, mean, var, training=True, backend=backend)
    after_rng = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_rng), "fastest drew random numbers"
    torch.testing.assert_close(stats["fastest"], stats["torch"])  # one update, not one per trial


def test_cache_round_trips_to_disk(tmp_path, monkeypatch):
    path = tmp_path / "cache.json"
    x, w = conv_args()
    cnnops.conv2d(x, w, backend="fastest")
    cnnops.max_pool2d(x, 2, backend="fastest")
    before = {repr(k): v for k, v in _fastest._choices.items()}
    _fastest.save(str(path))
    data = json.loads(path.read_text())
    assert list(data["contexts"]) == [_fastest.context()]
    _fastest.clear()
    assert _fastest.load(str(path)) == 2
    assert {repr(k): v for k, v in _fastest._choices.items()} == before
    tuned = _fastest.tunings
    cnnops.conv2d(x, w, backend="fastest")
    assert _fastest.tunings == tuned
    # through the environment variable: new choices are written, and loaded by a fresh process
    _fastest.clear()
    env_path = tmp_path / "env.json"
    monkeypatch.setenv(_fastest.CACHE_ENV, str(env_path))
    cnnops.avg_pool2d(x, 2, backend="fastest")
    assert env_path.exists()
    _fastest.clear()
    tuned = _fastest.tunings
    cnnops.avg_pool2d(x, 2, backend="fastest")
    assert _fastest.tunings == tuned, "the env cache was not loaded"


def test_entries_of_another_machine_are_kept_but_not_used(tmp_path):
    path = tmp_path / "cache.json"
    x, w = conv_args()
    cnnops.conv2d(x, w, backend="fastest")
    _fastest.save(str(path))
    data = json.loads(path.read_text())
    data["contexts"] = {"another machine": data["contexts"][_fastest.context()]}
    path.write_text(json.dumps(data))
    _fastest.clear()
    assert _fastest.load(str(path)) == 0
    cnnops.max_pool2d(x, 2, backend="fastest")
    _fastest.save(str(path))
    assert set(json.loads(path.read_text())["contexts"]) == {"another machine",
                                                              _fastest.context()}


def test_fastest_on_cuda_without_a_gpu_raises_backend_unavailable():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    from torch._subclasses import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(1, 3, 8, 8, device="cuda")
        w = torch.empty(4, 3, 3, 3, device="cuda")
        for backend in ("fastest", "auto"):
            with pytest.raises(cnnops.BackendUnavailableError, match="CUDA is not available"):
                cnnops.conv2d(x, w, backend=backend)


def test_explain_lists_each_layer_and_why():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2),
                                torch.nn.BatchNorm2d(2))
    converted = cnnops.convert(model, backend="fastest")
    rows = cnnops.explain(converted, torch.randn(2, 1, 8, 8))
    assert [(r["module"], r["op"], r["requested"]) for r in rows] == [
        ("0", "conv2d", "fastest"), ("1", "max_pool2d", "fastest"), ("2", "batch_norm", "fastest")]
    assert all(r["why"].startswith("fastest: ") for r in rows)
    rows = cnnops.explain(cnnops.convert(model, backend="torch"), torch.randn(2, 1, 8, 8))
    assert {(r["backend"], r["why"]) for r in rows} == {("torch", "named")}
    assert "conv2d" in str(rows)


def test_torch_compile_without_graph_breaks_once_cached():
    model = torch.nn.Sequential(cnnops.nn.Conv2d(1, 2, 3, backend="fastest"),
                                cnnops.nn.MaxPool2d(2, backend="fastest"))
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)  # eager: fills the cache for every layer
    tuned = _fastest.tunings
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), expected)
    assert _fastest.tunings == tuned


def test_emulated_kernels_are_never_timed():
    """Triton's interpreter on the CPU is correct but far too slow to be a candidate."""
    x, w = conv_args()
    cnnops.conv2d(x, w, backend="fastest")
    (row,) = _fastest.choices()
    assert "triton" not in row["times_ms"] and "triton" in row["unavailable"]
    if "triton" in cnnops.available_backends("cpu"):
        assert "emulated" in row["unavailable"]["triton"]

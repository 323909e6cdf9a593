"""`python -m cnnops train`: data readers, the book's recipe, backends agreeing in training."""
import argparse
import gzip
import json
import os
import signal
import threading

import numpy as np
import pytest
import torch
from torch import nn

import cnnops
from cnnops.tools import data as datasets
from cnnops.tools import train
from cnnops.__main__ import main
from cnnops.models import INPUT_SIZES, init_weights, lenet, lenet_bn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_idx(path, array):
    """An IDX file as the MNIST tools write it: zero, zero, type code, ndim, big-endian dims."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += np.array(array.shape, dtype=">i4").tobytes()
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def fake_fashion_mnist(folder, num_train=40, num_test=12, seed=0, gz=True):
    """Random 28x28 images with labels in the four standard files, the torchvision layout."""
    rng = np.random.default_rng(seed)
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_is_read_from_idx_files(tmp_path, gz):
    arrays = fake_fashion_mnist(tmp_path, gz=gz)
    data = datasets.load("fashion-mnist", str(tmp_path))
    images, labels = data.train.tensors
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.float32
    np.testing.assert_array_equal((images[:, 0] * 255).round().byte().numpy(),
                                  arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels.numpy(), arrays["train-labels-idx1-ubyte"])
    assert data.test.tensors[0].shape == (12, 1, 28, 28)
    assert len(data.classes) == 10


def test_idx_reader_checks_its_input(tmp_path):
    wide = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "ints", wide)
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "ints")), wide)
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.array([5], ">i4").tobytes() + b"ab")
    with pytest.raises(ValueError, match="5"):
        datasets.read_idx(str(tmp_path / "short"))


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as info:
        datasets.load("fashion-mnist", str(tmp_path))
    assert "FashionMNIST" in str(info.value) and "download" in str(info.value)


def test_digits_split_is_fixed_disjoint_and_scaled():
    first, again = datasets.load("digits", seed=0), datasets.load("digits", seed=0)
    other = datasets.load("digits", seed=1)
    images, labels = first.train.tensors
    assert images.shape == (1438, 1, 8, 8) and len(first.test) == 359
    assert 0.0 <= images.min() and images.max() == 1.0
    assert torch.equal(images, again.train.tensors[0])
    assert not torch.equal(images, other.train.tensors[0])
    assert set(labels.tolist()) == set(range(10))
    # no test image is also a train image (the 1797 digits hold a few duplicates: compare
    # the counts of the two halves with the whole)
    whole = {tuple(x.flatten().tolist()) for x in torch.cat([images, first.test.tensors[0]])}
    train_set = {tuple(x.flatten().tolist()) for x in images}
    test_set = {tuple(x.flatten().tolist()) for x in first.test.tensors[0]}
    assert len(train_set) + len(test_set) - len(train_set & test_set) == len(whole)


def test_resize_to_the_model_input():
    x = torch.rand(3, 1, 8, 8)
    assert datasets.resize(x, 8) is x
    y = datasets.resize(x, 28)
    assert y.shape == (3, 1, 28, 28)
    # bilinear upsampling keeps the range and, roughly, the mean
    assert x.min() <= y.min() and y.max() <= x.max()
    torch.testing.assert_close(y.mean(), x.mean(), atol=0.05, rtol=0)


def test_xavier_init_reaches_our_conv_subclass():
    conv = cnnops.nn.Conv2d(3, 8, 5)
    torch.manual_seed(0)
    init_weights(conv)
    expected = torch.empty_like(conv.weight)
    torch.manual_seed(0)
    nn.init.xavier_uniform_(expected)
    assert torch.equal(conv.weight, expected)


def test_models_come_xavier_initialised():
    """Every conv and linear weight is drawn from Xavier-uniform's range, not torch's default
    (Kaiming-uniform with a = sqrt(5), bound 1/sqrt(fan_in)), and a seed fixes them."""
    torch.manual_seed(3)
    model = lenet_bn(backend="torch")
    torch.manual_seed(3)
    again = lenet_bn(backend="torch")
    wider_than_default = 0
    for layer, twin in zip(model, again):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = layer.weight
            fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
            xavier, default = (6 / (fan_in + fan_out)) ** 0.5, fan_in ** -0.5
            assert w.abs().max() <= xavier
            if default < 0.9 * xavier:  # a draw outside the default's range: not the default
                assert w.abs().max() > default
                wider_than_default += 1
            assert torch.equal(w, twin.weight)
    assert wider_than_default >= 2


def train_steps(factory, backend, steps=5, seed=0, batch=32, size=28):
    """SGD steps of the book's recipe on digits batches; the losses seen and the model."""
    data = datasets.load("digits")
    images, labels = data.train.tensors
    torch.manual_seed(seed)
    model = factory(backend=backend)  # Xavier-initialised by the factory
    optimizer = torch.optim.SGD(model.parameters(), lr=0.9)
    losses = []
    for step in range(steps):
        X = datasets.resize(images[step * batch:(step + 1) * batch], size)
        y = labels[step * batch:(step + 1) * batch]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model


def skip_unless_backend_has(backend, ops):
    if backend not in cnnops.available_backends("cpu"):
        pytest.skip(f"{backend} cannot run CPU tensors here")
    missing = [op for op in ops if not cnnops.get_backend(backend).implements(op)]
    if missing:
        pytest.skip(f"{backend} has no {', '.join(missing)} yet")


@pytest.mark.parametrize("factory, ops", [
    (lenet, ["conv2d", "avg_pool2d"]), (lenet_bn, ["conv2d", "avg_pool2d", "batch_norm"])],
    ids=["lenet", "lenet_bn"])
def test_native_trains_like_torch(factory, ops):
    skip_unless_backend_has("native", ops)
    torch_losses, torch_model = train_steps(factory, "torch")
    native_losses, native_model = train_steps(factory, "native")
    np.testing.assert_allclose(native_losses, torch_losses, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(torch_model.state_dict().items(),
                            native_model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def tiny_cnn(backend=None):
    """Every layer kind of the models, small enough for Triton's interpreter on 8x8 digits."""
    return nn.Sequential(
        cnnops.nn.Conv2d(1, 4, kernel_size=3, padding=1, backend=backend),
        cnnops.nn.BatchNorm2d(4, backend=backend), nn.ReLU(),
        cnnops.nn.MaxPool2d(kernel_size=2, stride=2, backend=backend),
        cnnops.nn.Conv2d(4, 6, kernel_size=3, backend=backend), nn.Sigmoid(),
        cnnops.nn.AvgPool2d(kernel_size=2, backend=backend), nn.Flatten(),
        nn.Linear(6, 8), cnnops.nn.BatchNorm1d(8, backend=backend), nn.Sigmoid(),
        nn.Linear(8, 10))


def test_triton_interpreter_trains_a_tiny_cnn_like_torch():
    skip_unless_backend_has("triton", ["conv2d", "max_pool2d", "avg_pool2d", "batch_norm"])
    torch_losses, torch_model = train_steps(tiny_cnn, "torch", steps=2, batch=4, size=8)
    triton_losses, triton_model = train_steps(tiny_cnn, "triton", steps=2, batch=4, size=8)
    np.testing.assert_allclose(triton_losses, torch_losses, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(torch_model.state_dict().items(),
                            triton_model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def parse(argv):
    parser = argparse.ArgumentParser()
    train.configure(parser)
    return parser.parse_args(argv)


def test_train_command_end_to_end_on_the_default_data(tmp_path, capsys):
    # --device cpu: on a GPU machine the default device is cuda
    status = main(["train", "lenet_bn", "--epochs", "2", "--limit", "96", "--batch-size", "32",
                   "--backend", "torch", "--device", "cpu", "--out", str(tmp_path), "--quiet"])
    assert status == 0
    out = capsys.readouterr().out
    assert "examples/sec on cpu (backend torch)" in out
    log = json.loads((tmp_path / "lenet_bn-torch-digits.json").read_text())
    assert (tmp_path / "lenet_bn-torch-digits.png").read_bytes()[:8] == PNG_MAGIC
    assert log["model"] == "lenet_bn" and log["data"] == "digits" and log["epochs"] == 2
    assert log["lr"] == 1.0 and log["input_size"] == 28 and log["world_size"] == 1
    assert log["train_examples"] == 96 and log["test_examples"] == 96
    assert log["backend_by_op"] == {"avg_pool2d": "torch", "batch_norm": "torch",
                                    "conv2d": "torch"}
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    for h in log["history"]:
        assert h["examples"] == 96 and h["examples_per_sec"] > 0
        # accuracies are counts of 96 examples, not just numbers in [0, 1]
        assert h["train_acc"] * 96 == pytest.approx(round(h["train_acc"] * 96), abs=1e-9)
        assert h["test_acc"] * 96 == pytest.approx(round(h["test_acc"] * 96), abs=1e-9)
        assert np.isfinite(h["train_loss"]) and h["train_loss"] > 0
    assert log["test_acc"] == log["history"][-1]["test_acc"]


def test_the_logged_metrics_are_the_model_s(tmp_path):
    """The log's test accuracy is what the returned model scores when evaluated here, by hand,
    and the weights moved away from the seeded initial ones."""
    args = parse(["lenet_bn", "--epochs", "1", "--limit", "64", "--batch-size", "16",
                  "--backend", "torch", "--device", "cpu", "--out", str(tmp_path), "--quiet",
                  "--no-checkpoint"])
    record, model = train.execute(args)
    images, labels = datasets.load("digits").test.tensors
    images, labels = images[:64], labels[:64]
    model.eval()
    with torch.no_grad():
        predicted = model(datasets.resize(images, INPUT_SIZES["lenet_bn"])).argmax(dim=1)
    assert record["test_acc"] == (predicted == labels).double().mean().item()
    torch.manual_seed(0)
    initial = lenet_bn(backend="torch")
    assert not torch.equal(initial[0].weight, model[0].weight)
    assert not (tmp_path / "lenet_bn-torch-digits.ckpt").exists()


# 48 examples in batches of 16: 3 steps an epoch
CKPT_ARGS = ["lenet_bn", "--limit", "48", "--batch-size", "16", "--backend", "torch",
             "--device", "cpu", "--quiet", "--no-plot"]


def straight_run(tmp_path, epochs=2):
    record, model = train.execute(parse(CKPT_ARGS + ["--epochs", str(epochs), "--out",
                                                     str(tmp_path / "straight")]))
    return record, model


def assert_same_run(resumed, straight):
    (record, model), (want_record, want_model) = resumed, straight
    for (name, a), b in zip(want_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming"
    timing = ("train_seconds", "examples_per_sec")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in record["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in timing}
                     for h in want_record["history"]]


def test_resume_after_epoch_one_reaches_the_straight_run_bit_for_bit(tmp_path):
    out = tmp_path / "stopped"
    first, _ = train.execute(parse(CKPT_ARGS + ["--epochs", "1", "--out", str(out)]))
    ckpt = out / "lenet_bn-torch-digits.ckpt"
    assert first["checkpoint"] == str(ckpt) and ckpt.exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 0 and len(state["history"]) == 1
    assert {"torch", "python", "numpy", "loader"} <= set(state["rng"])
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # renamed into place
    resumed = train.execute(parse(CKPT_ARGS + ["--epochs", "2", "--out", str(out),
                                               "--resume"]))
    assert resumed[0]["epochs"] == 2 and len(resumed[0]["history"]) == 2
    assert_same_run(resumed, straight_run(tmp_path))


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    out = tmp_path / "stopped"
    real_resize, calls = datasets.resize, []

    def ctrl_c_at_the_second_step(images, size):
        calls.append(1)
        if len(calls) == 2:  # the second of epoch 1's 3 training steps
            os.kill(os.getpid(), signal.SIGINT)
        return real_resize(images, size)
    monkeypatch.setattr(datasets, "resize", ctrl_c_at_the_second_step)
    status = main(["train", *CKPT_ARGS, "--epochs", "2", "--out", str(out)])
    monkeypatch.setattr(datasets, "resize", real_resize)
    assert status == 130
    assert "--resume" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    state = torch.load(out / "lenet_bn-torch-digits.ckpt", weights_only=True)
    assert (state["epoch"], state["step"], state["history"]) == (0, 2, [])
    assert not (out / "lenet_bn-torch-digits.json").exists()  # no log of an unfinished run
    resumed = train.execute(parse(CKPT_ARGS + ["--epochs", "2", "--out", str(out),
                                               "--resume"]))
    assert_same_run(resumed, straight_run(tmp_path))


def test_resume_refuses_another_run_s_checkpoint(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["train", *CKPT_ARGS, "--epochs", "1", "--out", out, "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", *CKPT_ARGS, "--epochs", "1", "--out", out]) == 0
    assert main(["train", *CKPT_ARGS, "--epochs", "2", "--lr", "0.5", "--out", out,
                 "--resume"]) == 2
    assert "lr 1.0 there, 0.5 now" in capsys.readouterr().err


def test_train_on_fashion_mnist_files_with_resize(tmp_path):
    fake_fashion_mnist(tmp_path / "data")
    args = parse(["googlenet", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                  "--resize", "32", "--batch-size", "20", "--backend", "torch",
                  "--out", str(tmp_path / "runs"), "--quiet"])
    record, _ = train.execute(args)
    assert record["data"] == "fashion-mnist" and record["input_size"] == 32
    assert record["train_examples"] == 40 and record["history"][0]["examples"] == 40
    assert (tmp_path / "runs" / "googlenet-torch-fashion-mnist.png").exists()


def test_book_recipes_and_defaults():
    assert {name: (r.lr, r.batch_size, INPUT_SIZES[name])
            for name, r in train.RECIPES.items()} == {
        "lenet": (0.9, 256, 28), "lenet_bn": (1.0, 256, 28), "alexnet": (0.01, 128, 224),
        "vgg11": (0.05, 128, 224), "nin": (0.1, 128, 224), "googlenet": (0.1, 128, 96),
        "resnet18": (0.05, 256, 96), "densenet": (0.1, 256, 96)}
    assert train.RECIPES["vgg11"].options == {"ratio": 4}
    assert set(train.RECIPES) == set(cnnops.models.MODELS)


def test_bad_requests_fail_with_a_message(tmp_path, capsys):
    assert main(["train", "lenet", "--ratio", "2", "--out", str(tmp_path)]) == 2
    assert "--ratio applies to vgg11 only" in capsys.readouterr().err
    assert main(["train", "lenet", "--data", "fashion-mnist", "--data-dir",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "Fashion-MNIST not found" in capsys.readouterr().err
    assert main(["train", "lenet", "--epochs", "0", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        parse(["lenet", "--backend", "xyz"])
    # a backend that cannot run on the CPU here is refused up front, naming it
    missing = [b for b in ("native", "triton") if b not in cnnops.available_backends("cpu")]
    if missing:
        assert main(["train", "lenet", "--backend", missing[0], "--epochs", "1",
                     "--device", "cpu", "--out", str(tmp_path)]) == 2
        assert missing[0] in capsys.readouterr().err

"""The classic models: the book's layer shapes, our layers everywhere, the book's structure."""
import pytest
import torch
from torch import nn

import cnnops
from cnnops import nn as cnn
from cnnops.models import INPUT_SIZES, MODELS, alexnet, densenet, googlenet, lenet, lenet_bn
from cnnops.models import nin, resnet18, vgg11
from cnnops.nn import GlobalAvgPool2d
from cnnops.models.densenet import DenseBlock, transition_block
from cnnops.models.googlenet import Inception
from cnnops.models.resnet import Residual

# The shapes the book prints (seeds 003 and 004), one per top-level layer, batch 1.
BOOK_SHAPES = {
    "lenet": [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5),
              (400,), (120,), (120,), (84,), (84,), (10,)],
    "lenet_bn": [(6, 24, 24), (6, 24, 24), (6, 24, 24), (6, 12, 12), (16, 8, 8), (16, 8, 8),
                 (16, 8, 8), (16, 4, 4), (256,), (120,), (120,), (120,), (84,), (84,), (84,),
                 (10,)],
    "alexnet": [(96, 54, 54), (96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 26, 26),
                (256, 12, 12), (384, 12, 12), (384, 12, 12), (384, 12, 12), (384, 12, 12),
                (256, 12, 12), (256, 12, 12), (256, 5, 5), (6400,), (4096,), (4096,), (4096,),
                (4096,), (4096,), (4096,), (10,)],
    "vgg11": [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7),
              (25088,), (4096,), (4096,), (4096,), (4096,), (4096,), (4096,), (10,)],
    "nin": [(96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12),
            (384, 5, 5), (384, 5, 5), (10, 5, 5), (10, 1, 1), (10,)],
    "googlenet": [(64, 24, 24), (192, 12, 12), (480, 6, 6), (832, 3, 3), (1024,), (10,)],
    "resnet18": [(64, 24, 24), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3),
                 (512, 1, 1), (512,), (10,)],
    "densenet": [(64, 24, 24), (192, 24, 24), (96, 12, 12), (224, 12, 12), (112, 6, 6),
                 (240, 6, 6), (120, 3, 3), (248, 3, 3), (248, 3, 3), (248, 3, 3), (248, 1, 1),
                 (248,), (10,)],
}

# VGG-11 at ratio 1 costs ~7.6 GFLOP per image: its shapes are checked on the meta device.
REAL_DEVICE = [name for name in MODELS if name != "vgg11"]


def layer_shapes(model, x):
    shapes = []
    for layer in model:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("name", REAL_DEVICE)
def test_book_layer_shapes(name):
    torch.manual_seed(0)
    model = MODELS[name](backend="torch").eval()
    size = INPUT_SIZES[name]
    with torch.no_grad():
        assert layer_shapes(model, torch.rand(1, 1, size, size)) == BOOK_SHAPES[name]


def test_vgg11_ratio_1_shapes_on_meta_device():
    with torch.device("meta"):
        model = vgg11()
        assert layer_shapes(model, torch.empty(1, 1, 224, 224)) == BOOK_SHAPES["vgg11"]


def test_vgg11_ratio_4_as_the_book_trains():
    torch.manual_seed(0)
    model = vgg11(backend="torch", ratio=4).eval()
    with torch.no_grad():
        shapes = layer_shapes(model, torch.rand(1, 1, 224, 224))
    assert shapes[:6] == [(16, 112, 112), (32, 56, 56), (64, 28, 28), (128, 14, 14),
                          (128, 7, 7), (6272,)]
    assert shapes[-1] == (10,)
    with pytest.raises(ValueError, match="ratio"):
        vgg11(ratio=3)


@pytest.mark.parametrize("name, size", [("lenet", 28), ("lenet_bn", 28), ("resnet18", 64)])
def test_batch_of_two_other_classes_and_channels(name, size):
    model = MODELS[name](num_classes=7, in_channels=3, backend="torch")
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_every_conv_pool_and_norm_is_ours_with_the_backend(name):
    options = {"ratio": 8} if name == "vgg11" else {}
    with torch.device("meta"):
        model = MODELS[name](backend="torch", **options)
    torch_kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d)
    ours = (cnn.Conv2d, cnn.MaxPool2d, cnn.AvgPool2d, cnn.BatchNorm1d, cnn.BatchNorm2d,
            GlobalAvgPool2d)
    layers = [m for m in model.modules() if isinstance(m, torch_kinds + (GlobalAvgPool2d,))]
    assert layers
    for m in layers:
        assert isinstance(m, ours), f"{name}: {type(m).__name__} is not a cnnops layer"
        assert m.backend == "torch"
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
                   for m in model.modules())


def test_lenet_bn_uses_batchnorm1d_on_the_dense_layers():
    norms = [m for m in lenet_bn() if isinstance(m, cnn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [120, 84]


def book_lenet():
    """The book's LeNet in torch.nn, verbatim (seed 003)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def book_lenet_bn():
    """The book's LeNet-BN with the torch API, verbatim (seed 004)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10))


@pytest.mark.parametrize("ours, book", [(lenet, book_lenet), (lenet_bn, book_lenet_bn)])
def test_same_function_as_the_book_code_with_the_same_weights(ours, book):
    torch.manual_seed(0)
    model = ours(backend="torch").double()
    reference = book().double()
    reference.load_state_dict(model.state_dict())  # strict: same layers, same keys
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x), atol=1e-12, rtol=1e-12)


def test_global_avg_pool_is_adaptive_avg_pool_1x1():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    pool = GlobalAvgPool2d(backend="torch")
    expected = nn.AdaptiveAvgPool2d((1, 1))(x)
    torch.testing.assert_close(pool(x), expected)
    assert torch.autograd.gradcheck(pool, (x,))


def test_book_block_shapes():
    """The block examples the book prints (seed 004): Residual, DenseBlock, transition."""
    x = torch.rand(4, 3, 6, 6)
    assert Residual(3, 3, backend="torch")(x).shape == (4, 3, 6, 6)
    assert Residual(3, 6, use_1x1conv=True, stride=2, backend="torch")(x).shape == (4, 6, 3, 3)
    y = DenseBlock(2, 3, 10, backend="torch")(torch.randn(4, 3, 8, 8))
    assert y.shape == (4, 23, 8, 8)
    assert transition_block(23, 10, backend="torch")(y).shape == (4, 10, 4, 4)
    inception = Inception(192, 64, (96, 128), (16, 32), 32, backend="torch")
    assert inception(torch.rand(1, 192, 12, 12)).shape == (1, 256, 12, 12)


def test_models_other_than_the_book_input_size_still_pool_globally():
    # The global pool follows the input; a 64x64 GoogLeNet / ResNet / DenseNet still works.
    for factory in (googlenet, resnet18, densenet):
        with torch.no_grad():
            assert factory(backend="torch").eval()(torch.rand(1, 1, 64, 64)).shape == (1, 10)


def test_nin_and_alexnet_dropout_option():
    assert all(m.p == 0.25 for m in nin(dropout=0.25).modules() if isinstance(m, nn.Dropout))
    assert all(m.p == 0.0 for m in alexnet(dropout=0.0).modules() if isinstance(m, nn.Dropout))


def test_unknown_backend_name_is_rejected():
    model = lenet(backend="xyz")
    with pytest.raises(ValueError, match="xyz") as info:
        model(torch.rand(1, 1, 28, 28))
    # ... with the names that would work
    for name in cnnops._dispatch.BACKEND_NAMES:
        assert repr(name) in str(info.value)
    # the same weights on a real backend name compute the function
    good = lenet(backend="torch")
    good.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(good(x), book_lenet_with(model.state_dict())(x))


def book_lenet_with(state):
    reference = book_lenet()
    reference.load_state_dict(state)
    return reference

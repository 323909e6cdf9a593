"""The classic CNNs of Dive into Deep Learning, built from `cnnops.nn` layers.

Every factory is `(num_classes=10, in_channels=1, backend=None, **options)` and gives the
book's layer shapes for Fashion-MNIST at the book's input size (`INPUT_SIZES`, the one table of
input sizes: the bench catalogue, `python -m cnnops train` and the tests read it), with the
book's Xavier-initialised weights (`init_weights`). The models reach the kernels only through
`cnnops.nn` layers.
"""
from ._init import init_weights
from .alexnet import alexnet
from .densenet import densenet
from .googlenet import googlenet
from .lenet import lenet, lenet_bn
from .nin import nin
from .resnet import resnet18
from .vgg import vgg11

MODELS = {
    "lenet": lenet, "lenet_bn": lenet_bn, "alexnet": alexnet, "vgg11": vgg11, "nin": nin,
    "googlenet": googlenet, "resnet18": resnet18, "densenet": densenet,
}

# The square input side each model is built for (the book's `resize`).
INPUT_SIZES = {
    "lenet": 28, "lenet_bn": 28, "alexnet": 224, "vgg11": 224, "nin": 224,
    "googlenet": 96, "resnet18": 96, "densenet": 96,
}

__all__ = list(MODELS) + ["MODELS", "INPUT_SIZES", "init_weights"]

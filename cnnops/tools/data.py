"""Images for `python -m cnnops train`: Fashion-MNIST from its IDX files, or scikit-learn's digits.

Nothing is downloaded here. Fashion-MNIST is read from the four standard IDX files, gzipped
or not, in `data_dir` or in torchvision's layout `data_dir/FashionMNIST/raw/`. The default,
`digits`, is the 1797 8x8 handwritten digits that ship inside scikit-learn, so training works
on a fresh machine with no network. Images are float32 in [0, 1], shape (N, 1, H, W), at
their own resolution; `resize` brings a batch to the model's input size on its device.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

DATASETS = ("digits", "fashion-mnist")

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
FASHION_MNIST_HELP = (
    "Get the four files once, e.g. with torchvision: "
    "python -c \"import torchvision; torchvision.datasets.FashionMNIST('data', download=True)\" "
    "(then --data-dir data), or download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into one folder.")

# IDX type codes (the third byte of the magic number) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageData:
    """A train/test split of single-channel images in [0, 1] with int64 labels."""
    name: str
    train: Dataset
    test: Dataset
    classes: tuple[str, ...]


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (the MNIST format), plain or gzipped, into an array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), "
                         f"file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_fashion_mnist(data_dir: str) -> dict[str, str]:
    """The paths of the four Fashion-MNIST files under `data_dir`, or FileNotFoundError."""
    folders = [data_dir, os.path.join(data_dir, "FashionMNIST", "raw"),
               os.path.join(data_dir, "raw")]
    for folder in folders:
        found = {}
        for key, stem in FASHION_MNIST_FILES.items():
            for name in (stem, stem + ".gz"):
                if os.path.isfile(os.path.join(folder, name)):
                    found[key] = os.path.join(folder, name)
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    raise FileNotFoundError(
        f"Fashion-MNIST not found: looked for {', '.join(FASHION_MNIST_FILES.values())} "
        f"(optionally .gz) in {', '.join(folders)}. {FASHION_MNIST_HELP}")


def _images(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(1)


def load_fashion_mnist(data_dir: str) -> ImageData:
    """60000 train and 10000 test 28x28 images of 10 clothing classes."""
    paths = find_fashion_mnist(data_dir)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {split}: images {images.shape} and labels "
                             f"{labels.shape} do not match")
    return ImageData(
        "fashion-mnist",
        TensorDataset(_images(arrays["train_images"]),
                      torch.from_numpy(arrays["train_labels"].astype(np.int64))),
        TensorDataset(_images(arrays["test_images"]),
                      torch.from_numpy(arrays["test_labels"].astype(np.int64))),
        FASHION_MNIST_CLASSES)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 1797 8x8 digits (bundled in its wheel), split at random with `seed`."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError("the default data set, digits, needs scikit-learn: "
                          "pip install scikit-learn (or use --data fashion-mnist)") from e
    digits = sklearn_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_test = round(len(labels) * test_fraction)
    test, train = order[:num_test], order[num_test:]
    return ImageData("digits", TensorDataset(images[train], labels[train]),
                     TensorDataset(images[test], labels[test]),
                     tuple(str(c) for c in range(10)))


def load(name: str, data_dir: str | None = None, seed: int = 0) -> ImageData:
    """`name` is "digits" or "fashion-mnist" (which reads `data_dir`, default ./data)."""
    if name == "digits":
        return load_digits(seed=seed)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir or "data")
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a (N, C, H, W) batch to size x size (the book's Resize)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < max(images.shape[-2:]))

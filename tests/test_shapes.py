"""conv2d_output_shape / pool2d_output_shape: the seeds' formulas and PyTorch's ceil_mode."""
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import cnnops


def test_seed_examples():
    # d2l 7.3: 8x8 input, 3x3 kernel, padding 1 -> 8x8; 5x3 kernel, padding (2, 1) -> 8x8;
    # stride 2 -> 4x4; kernel (3, 5), padding (0, 1), stride (3, 4) -> 2x2
    assert cnnops.conv2d_output_shape((8, 8), 3, padding=1) == (8, 8)
    assert cnnops.conv2d_output_shape((8, 8), (5, 3), padding=(2, 1)) == (8, 8)
    assert cnnops.conv2d_output_shape((8, 8), 3, padding=1, stride=2) == (4, 4)
    assert cnnops.conv2d_output_shape((8, 8), (3, 5), padding=(0, 1), stride=(3, 4)) == (2, 2)
    assert cnnops.conv2d_output_shape((8, 8), 4, padding="same") == (8, 8)
    assert cnnops.conv2d_output_shape((8, 8), 4, padding="valid") == (5, 5)
    assert cnnops.pool2d_output_shape((4, 4), 3) == (1, 1)
    assert cnnops.pool2d_output_shape((4, 4), 3, padding=1, stride=2) == (2, 2)


def test_matches_torch_on_random_configurations():
    rng = random.Random(7)
    for _ in range(300):
        h, w = rng.randint(1, 17), rng.randint(1, 17)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 4), rng.randint(1, 4))
        d = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        ceil = rng.random() < 0.5
        x = torch.empty(1, 1, h, w)
        try:
            want = tuple(F.max_pool2d(x, k, s, p, d, ceil).shape[-2:])
        except RuntimeError:
            with pytest.raises(ValueError):
                cnnops.pool2d_output_shape((h, w), k, s, p, d, ceil)
        else:
            try:
                got = cnnops.pool2d_output_shape((h, w), k, s, p, d, ceil)
            except ValueError as e:  # torch's -inf windows, refused on purpose
                assert "covers no input element" in str(e)
            else:
                assert got == want
        try:
            want = tuple(F.conv2d(x, torch.empty(1, 1, *k), None, s, p, d).shape[-2:])
        except RuntimeError:
            with pytest.raises(ValueError):
                cnnops.conv2d_output_shape((h, w), k, s, p, d)
        else:
            assert cnnops.conv2d_output_shape((h, w), k, s, p, d) == want


@pytest.mark.parametrize("args", [((8, 8), 9), ((8, 8), 3, 0), ((8, 8), 3, 1, -1),
                                  ((8, 8), 3, 2, "same"), ((0, 8), 1)])
def test_conv2d_output_shape_rejects(args):
    with pytest.raises(ValueError):
        cnnops.conv2d_output_shape(*args)


def test_pool2d_output_shape_rejects_padding_over_half_kernel():
    with pytest.raises(ValueError, match="half"):
        cnnops.pool2d_output_shape((8, 8), 3, padding=2)


@pytest.mark.parametrize("k,s,p,d", list(itertools.product([2, 3], [1, 2], [0, 1], [1, 2])))
def test_ceil_mode_never_starts_a_window_in_the_right_padding(k, s, p, d):
    for n in range(max(1, d * (k - 1) + 1 - 2 * p), 12):
        want = tuple(F.max_pool2d(torch.empty(1, 1, n, n), k, s, p, d, True).shape[-2:])
        try:
            assert cnnops.pool2d_output_shape((n, n), k, s, p, d, True) == want
        except ValueError as e:  # torch's -inf windows, refused on purpose
            assert "covers no input element" in str(e) and d > 1

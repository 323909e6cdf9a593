"""The `reference` backend: the book's loops (`cnnops.reference`), clear and slow, any device.

Autograd through the loops is the backward. Never chosen by "auto": tiny inputs only.
"""
import torch

from cnnops import reference
from cnnops.backends import Backend

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class ReferenceBackend(Backend):
    name = "reference"
    dtypes = {"cpu": FLOATS, "cuda": FLOATS}

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        return reference.conv2d(input, weight, bias, stride, padding, dilation, groups,
                                activation)

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode,
                   need_indices=True):
        return reference.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        return reference.avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                    count_include_pad, divisor_override)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        out, new_mean, new_var = reference.batch_norm_general(
            input, running_mean, running_var, weight, bias, training, momentum, eps)
        if new_mean is not None:  # the one running-stats rule: the op is functional, the
            with torch.no_grad():  # backend method writes the caller's buffers
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
        return out


BACKEND = ReferenceBackend()

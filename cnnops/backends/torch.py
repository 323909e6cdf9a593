"""The `torch` backend: PyTorch's own ops (cuDNN / oneDNN), the baseline of every comparison."""
import torch
import torch.nn.functional as F

from cnnops.backends import Backend

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class TorchBackend(Backend):
    name = "torch"
    dtypes = {"cpu": FLOATS, "cuda": FLOATS}

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return F.relu(out) if activation == "relu" else out

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode,
                   need_indices=True):
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices=True)

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                            eps)


BACKEND = TorchBackend()

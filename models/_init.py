"""The book's weight initialisation, applied by every model factory to the model it returns."""
from torch import nn


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform weights for linear and conv layers (d2l's `init_cnn` / `xavier_uniform_`).

    isinstance, so that cnnops.nn.Conv2d (a subclass of torch.nn.Conv2d) gets it too; biases
    and batch-norm parameters keep torch's defaults, as in the book."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def book_init(model: nn.Module) -> nn.Module:
    """`model` with init_weights applied to every layer (after torch's default init, so a
    seeded build draws the same numbers as building first and initialising after)."""
    return model.apply(init_weights)

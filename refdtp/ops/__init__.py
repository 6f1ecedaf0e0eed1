"""Primitive ops with hand-derived forward, JVP, VJP and parameter gradients."""
from .base import Chain, Op, check_input
from .conv import Conv2d, ConvTranspose2d, col2im, conv2d, conv2d_weight_grad, conv_transpose2d, im2col
from .elementwise import Act
from .linear import Linear, uniform_init
from .pool import AvgPool2d, AvgUnpool2d, MaxPool2d, MaxUnpool2d, gather_plane, scatter_plane
from .shape import Flatten, Reshape

__all__ = [
    "Act", "AvgPool2d", "AvgUnpool2d", "Chain", "Conv2d", "ConvTranspose2d", "Flatten", "Linear",
    "MaxPool2d", "MaxUnpool2d", "Op", "Reshape", "check_input", "col2im", "conv2d",
    "conv2d_weight_grad", "conv_transpose2d", "gather_plane", "im2col", "scatter_plane",
    "uniform_init",
]

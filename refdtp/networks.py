"""Networks as sequences of DTP blocks, and the architectures of the papers.

- :func:`simple_vgg`: the paper's CIFAR-10 / ImageNet32 network (docs/algorithm.md §5.2).
- :func:`lenet`: the paper's LeNet with overlapping 3/2/1 pools (docs/algorithm.md §5.3).
- :func:`mlp`: fully connected nets (docs/theory.md §1.3, networks M1-M5).
- :func:`small_convnet`: small conv nets for verification (docs/theory.md §1.3, C1/C2).

Parameters are nested dicts ``{block name: {"weight": ..., "bias": ...}}``:
``W`` for the forward maps F_n, ``omega`` for the feedback maps G_n.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .backend import TRAIN_DTYPE, check_float_dtype, host_rng, to_backend
from .blocks import Block, with_feedback_activation
from .hostsync import require_finite
from .ops import Act, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, check_input

# Stream keys for host_rng(seed, key, block index).
INIT_FORWARD, INIT_FEEDBACK = 1, 2


@dataclass
class Trace:
    """The cache of one forward pass through a network.

    Attributes:
        s: [s_0 = x, s_1, ..., s_N = logits], each (B, *shape_n).
        caches: per block, the forward chain's caches (pool indices among them).
    """
    s: list
    caches: list = field(default_factory=list)

    @property
    def logits(self):
        return self.s[-1]


class Network:
    """A feed-forward network of DTP blocks.

    Args:
        blocks: the blocks 1..N; block n's output shape must be block n+1's input shape.
        name: architecture name (for configs and reports).
    """

    def __init__(self, blocks: Sequence[Block], name: str = "network"):
        self.blocks = tuple(blocks)
        self.name = name
        for a, b in zip(self.blocks, self.blocks[1:], strict=False):
            if a.out_shape != b.in_shape:
                raise ValueError(f"{name}: block {a.name} outputs {a.out_shape} but {b.name} "
                                 f"expects {b.in_shape}")
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: block names must be unique, got {names}")
        self.in_shape = self.blocks[0].in_shape
        self.num_classes = math.prod(self.blocks[-1].out_shape)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def __len__(self) -> int:
        return len(self.blocks)

    def init(self, seed: int, dtype=TRAIN_DTYPE, backend: str = "numpy",
             symmetric: bool = False) -> tuple[dict, dict]:
        """Initial parameters (W, omega), PyTorch's defaults, drawn on the host.

        Args:
            seed: each block draws from host_rng(seed, INIT_*, block index).
            dtype: float32 (training) or float64 (verification).
            backend: where the arrays are placed.
            symmetric: scalingDTP's debug init (`init_symetric_weights`):
                omega = W (conv, same layout) or W^T (linear) with every bias
                zeroed. Values are copied, never aliased (docs/algorithm.md §5.6, §8).
        """
        dtype = check_float_dtype(dtype, f"{self.name}.init")
        W, omega = {}, {}
        for i, b in enumerate(self.blocks):
            W[b.name] = b.init_forward(host_rng(seed, INIT_FORWARD, i), dtype)
            omega[b.name] = b.init_feedback(host_rng(seed, INIT_FEEDBACK, i), dtype)
            if symmetric:
                W[b.name], omega[b.name] = symmetric_feedback(b, W[b.name], omega[b.name])
        return ({k: {n: to_backend(a, backend) for n, a in v.items()} for k, v in W.items()},
                {k: {n: to_backend(a, backend) for n, a in v.items()} for k, v in omega.items()})

    def forward(self, W: dict, x, check: bool = True) -> Trace:
        """Forward pass s_n = F_n(s_{n-1}; W_n), keeping every cache.

        Args:
            W: forward parameters.
            x: (B, *in_shape) float input.
            check: validate x (shape, dtype, NaN/Inf) first.
        """
        if check:
            check_input(x, self.in_shape, f"{self.name} input")
            require_finite(x, f"{self.name} input")
        s, caches = [x], []
        for b in self.blocks:
            y, cache = b.forward(W[b.name], s[-1])
            s.append(y)
            caches.append(cache)
        return Trace(s, caches)

    def logits(self, W: dict, x):
        """(B, num_classes) logits s_N."""
        return self.forward(W, x).logits.reshape(x.shape[0], -1)

    def __repr__(self) -> str:
        return f"Network({self.name}:\n  " + "\n  ".join(map(repr, self.blocks)) + "\n)"


def symmetric_feedback(block: Block, W: dict, omega: dict) -> tuple[dict, dict]:
    """(W with zero bias, omega = W or W^T with zero bias) for one block."""
    fw, fb = block.F.param_op, block.G.param_op
    if fw is None or fb is None:
        raise ValueError(f"{block.name}: symmetric init needs a weight layer in F and in G")
    W = {k: (np.zeros_like(v) if k == "bias" else v) for k, v in W.items()}
    weight = W["weight"].T if isinstance(fw, Linear) else W["weight"]
    omega = {k: np.zeros_like(v) for k, v in omega.items()}
    if omega["weight"].shape != weight.shape:
        raise ValueError(f"{block.name}: symmetric init needs matching shapes, got "
                         f"{weight.shape} and {omega['weight'].shape}")
    omega["weight"] = np.array(weight, copy=True)
    return W, omega


def count_params(params: dict) -> int:
    """Number of scalars in a nested parameter dict."""
    return sum(int(np.prod(a.shape)) for block in params.values() for a in block.values())


# -- block builders ---------------------------------------------------------

def conv_block(name: str, in_shape: tuple, c_out: int, k: int = 3, padding: int = 1,
               activation: str = "elu", pool: str | None = "max", pool_k: int = 2,
               pool_stride: int | None = None, pool_padding: int = 0, pool_first: bool = False,
               feedback_activation: str | None = None) -> Block:
    """conv -> activation -> pool (or conv -> pool -> activation with pool_first).

    The paper's conv block is conv 3x3/pad 1 -> ELU -> max-pool 2/2, and its
    feedback un-pool -> ELU -> conv-transpose.
    """
    conv = Conv2d(in_shape, c_out, k, 1, padding)
    ops: list = [conv]

    def act(shape):
        return Act(shape, activation)

    if pool is None:
        ops.append(act(conv.out_shape))
    else:
        pool_cls = {"max": MaxPool2d, "avg": AvgPool2d}[pool]
        if pool_first:
            p = pool_cls(conv.out_shape, pool_k, pool_stride, pool_padding)
            ops += [p, act(p.out_shape)]
        else:
            ops.append(act(conv.out_shape))
            ops.append(pool_cls(conv.out_shape, pool_k, pool_stride, pool_padding))
    feedback = None if feedback_activation is None else with_feedback_activation(ops, feedback_activation)
    return Block(name, ops, feedback)


def linear_block(name: str, in_shape: tuple, n_out: int, activation: str | None = None,
                 feedback_activation: str | None = None, bias: bool = True) -> Block:
    """[flatten ->] linear -> [activation]; feedback inverts it (with its own weights)."""
    ops: list = []
    if len(in_shape) > 1:
        ops.append(Flatten(in_shape))
    n_in = math.prod(in_shape)
    ops.append(Linear(n_in, n_out, bias=bias))
    if activation is not None:
        ops.append(Act((n_out,), activation))
    feedback = None if feedback_activation is None else with_feedback_activation(ops, feedback_activation)
    return Block(name, ops, feedback)


# -- architectures --------------------------------------------------------

def simple_vgg(num_classes: int = 10, channels: Sequence[int] = (128, 128, 256, 256, 512),
               in_shape: tuple = (3, 32, 32), activation: str = "elu") -> Network:
    """The paper's SimpleVGG: 5 x (conv 3x3 -> ELU -> maxpool 2/2), then a linear layer.

    2,221,706 forward parameters for 10 classes (docs/algorithm.md §5.2).
    """
    blocks, shape = [], tuple(in_shape)
    for i, c in enumerate(channels):
        blocks.append(conv_block(f"conv_{i}", shape, c, activation=activation))
        shape = blocks[-1].out_shape
    blocks.append(linear_block("fc", shape, num_classes))
    return Network(blocks, "simple_vgg")


def lenet(num_classes: int = 10, in_shape: tuple = (3, 32, 32), activation: str = "elu") -> Network:
    """The paper's LeNet (docs/algorithm.md §5.3): two conv 5x5 blocks with overlapping
    3/2/1 max-pools, fc1 (4096 -> 512, ELU) and fc2 (512 -> classes).

    The overlapping pools make un-pooling differ from the transpose in
    scalingDTP; here un-pooling is the exact (summing) adjoint.
    """
    b1 = conv_block("conv_0", in_shape, 32, k=5, padding=2, activation=activation,
                    pool_k=3, pool_stride=2, pool_padding=1)
    b2 = conv_block("conv_1", b1.out_shape, 64, k=5, padding=2, activation=activation,
                    pool_k=3, pool_stride=2, pool_padding=1)
    b3 = linear_block("fc1", b2.out_shape, 512, activation=activation)
    b4 = linear_block("fc2", b3.out_shape, num_classes)
    return Network([b1, b2, b3, b4], "lenet")


def mlp(widths: Sequence[int], activation: str = "tanh", output_activation: str | None = None,
        feedback: str = "paper", in_shape: tuple | None = None) -> Network:
    """Fully connected net widths[0] -> ... -> widths[-1].

    Args:
        widths: layer sizes, input first (e.g. (6, 5, 4, 3) for M1 of docs/theory.md §1.3).
        activation: hidden activation.
        output_activation: activation of the last layer (None: linear output).
        feedback: "paper" (G = activation then linear, scalingDTP's inversion)
            or "jmc" (G = phi then linear, exact Jacobian matching possible).
        in_shape: per-sample input shape when inputs are images (flattened
            by the first block); its size must be widths[0].
    """
    if feedback not in ("paper", "jmc"):
        raise ValueError(f"mlp: feedback must be 'paper' or 'jmc', got {feedback!r}")
    from .activations import JMC_PHI
    blocks = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:], strict=False)):
        act = activation if i < len(widths) - 2 else output_activation
        fb_act = JMC_PHI.get(act) if (feedback == "jmc" and act is not None) else None
        if feedback == "jmc" and act is not None and fb_act is None:
            raise ValueError(f"mlp: no exact-JMC phi for activation {act!r}")
        shape = tuple(in_shape) if (i == 0 and in_shape is not None) else (n_in,)
        if math.prod(shape) != n_in:
            raise ValueError(f"mlp: in_shape {shape} does not have widths[0] = {n_in} entries")
        blocks.append(linear_block(f"fc_{i}", shape, n_out, act, fb_act))
    return Network(blocks, "mlp")


def small_convnet(in_shape: tuple = (1, 6, 6), channels: int = 2, num_classes: int = 3,
                  activation: str = "tanh", pool: str = "avg", pool_first: bool = True,
                  feedback: str = "paper") -> Network:
    """C1 (avg-pool) / C2 (max-pool) of docs/theory.md §1.3: conv 3x3 pad 1 -> pool 2 -> act -> dense.

    With pool_first and feedback="jmc", G_1 = ConvT(P^T phi(y)) can match J_F^T exactly.
    """
    from .activations import JMC_PHI
    fb_act = JMC_PHI[activation] if feedback == "jmc" else None
    b1 = conv_block("conv_0", in_shape, channels, activation=activation, pool=pool,
                    pool_first=pool_first, feedback_activation=fb_act)
    b2 = conv_block("conv_1", b1.out_shape, channels, activation=activation, pool=None,
                    feedback_activation=fb_act)
    b3 = linear_block("fc", b2.out_shape, num_classes)
    return Network([b1, b2, b3], "small_convnet")


def fwdtp_mlp(widths: Sequence[int], batch_standardize: bool = False, in_shape: tuple | None = None,
              activation: str = "tanh") -> Network:
    """FW-DTP's MLP (Shibuya et al. 2023): bias-free tanh blocks, fixed tanh feedback G(y) = tanh(B y),
    optionally with batch standardisation after every block; see :func:`refdtp.family.fwdtp.fwdtp_mlp`."""
    from .family.fwdtp import fwdtp_mlp as build
    return build(widths, batch_standardize, in_shape, activation)


ARCHITECTURES = {"simple_vgg": simple_vgg, "lenet": lenet, "mlp": mlp, "small_convnet": small_convnet,
                 "fwdtp_mlp": fwdtp_mlp, "fwdtp_mlp_bn": fwdtp_mlp}

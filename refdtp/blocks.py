"""DTP blocks: the paper's "layers", each a forward map F_n and a feedback map G_n.

A block holds two :class:`~refdtp.ops.Chain` s of primitive ops:

- the forward chain F_n(x; W_n), e.g. conv -> ELU -> max-pool;
- the feedback chain G_n(y; omega_n) from the block's output space back to
  its input space, built by "inverting" F_n as scalingDTP does
  (`target_prop/backward_layers.py:invert`, docs/algorithm.md §5.1): the
  sub-layers are reversed and Conv2d -> ConvTranspose2d, ELU -> ELU,
  MaxPool2d -> MaxUnpool2d, Linear(a->b) -> Linear(b->a), Reshape -> inverse
  Reshape. A block may also be given any other feedback chain (the exact-JMC
  "phi" feedback of docs/theory.md §3.4 used by the verification suite).

Max-unpool ops of G_n get the argmax indices of a forward pass of F_n as an
explicit *route* (``Block.route(trace)``), so G(y) and G(y + eta) can use the
clean routing while G(F(x + eps)) uses the noisy one (docs/conventions.md §3).

All methods are pure functions of (parameters, inputs, caches).
"""
from __future__ import annotations

from collections.abc import Sequence

from .backend import array_module
from .ops import Act, Chain, Op


def tree_add(a: dict, b: dict, scale: float = 1.0) -> dict:
    """{k: a[k] + scale * b[k]} for two parameter dicts with the same keys."""
    return {k: a[k] + scale * b[k] for k in a}


def invert(ops: Sequence[Op]) -> list[Op]:
    """scalingDTP's feedback rule: reverse the sub-layers and invert each one."""
    return [op.inverted() for op in reversed(ops)]


class Block:
    """One DTP block n: F_n (forward) and G_n (feedback).

    Args:
        name: block name, e.g. "conv_1" (used in messages and parameter keys).
        forward_ops: the ops of F_n, in order.
        feedback_ops: the ops of G_n, in order; default ``invert(forward_ops)``.

    Shapes: F_n maps (B, *in_shape) -> (B, *out_shape); G_n the reverse.
    """

    def __init__(self, name: str, forward_ops: Sequence[Op], feedback_ops: Sequence[Op] | None = None):
        self.name = name
        self.F = Chain(forward_ops, f"{name} forward")
        self.G = Chain(invert(forward_ops) if feedback_ops is None else feedback_ops, f"{name} feedback")
        self.in_shape, self.out_shape = self.F.in_shape, self.F.out_shape
        if self.G.in_shape != self.out_shape or self.G.out_shape != self.in_shape:
            raise ValueError(f"{name}: feedback maps {self.G.in_shape} -> {self.G.out_shape}, "
                             f"expected {self.out_shape} -> {self.in_shape}")
        self._route_sources = self._pair_routes()

    def _pair_routes(self) -> tuple:
        """For each feedback op that needs a route, the index of the forward op that makes it."""
        sources = []
        for op in self.G.ops:
            if not op.needs_route:
                sources.append(None)
                continue
            matches = [j for j, f in enumerate(self.F.ops) if f is op.pool]
            if not matches:
                raise ValueError(f"{self.name}: {op!r} is not paired with a pool of the forward chain")
            sources.append(matches[0])
        return tuple(sources)

    # -- parameters -------------------------------------------------------
    def init_forward(self, rng, dtype) -> dict:
        """W_n with PyTorch's default initialisation (host arrays)."""
        return self.F.init_params(rng, dtype)

    def init_feedback(self, rng, dtype) -> dict:
        """omega_n with PyTorch's default initialisation (host arrays)."""
        return self.G.init_params(rng, dtype)

    # -- forward map F_n -------------------------------------------------
    def forward(self, W: dict, x):
        """s_n = F_n(x; W). Returns (y (B, *out_shape), trace)."""
        return self.F.forward(W, x)

    def route(self, trace) -> tuple:
        """The pool indices of a forward pass, arranged for G_n's un-pool ops."""
        return tuple(None if j is None else trace[j] for j in self._route_sources)

    def forward_jvp(self, W, trace, dx):
        """J_F dx at the traced point."""
        return self.F.jvp(W, trace, dx)

    def forward_vjp(self, W, trace, dy):
        """J_F^T dy at the traced point."""
        return self.F.vjp(W, trace, dy)

    def forward_param_grads(self, W, trace, dy) -> dict:
        """d<dy, F_n(x; W)>/dW with x detached (the block-local gradient)."""
        return self.F.param_grads(W, trace, dy)

    def forward_param_jvp(self, W, trace, dW):
        """dF_n/dW along dW."""
        return self.F.param_jvp(W, trace, dW)

    # -- feedback map G_n -------------------------------------------------
    def feedback(self, omega: dict, y, route):
        """G_n(y; omega) with the given routing. Returns (x-space array, cache)."""
        return self.G.forward(omega, y, route)

    def feedback_jvp(self, omega, cache, dy):
        """J_G dy at the cached point."""
        return self.G.jvp(omega, cache, dy)

    def feedback_vjp(self, omega, cache, dx):
        """J_G^T dx at the cached point."""
        return self.G.vjp(omega, cache, dx)

    def feedback_param_grads(self, omega, cache, dx) -> dict:
        """d<dx, G_n(y; omega)>/d omega with y fixed."""
        return self.G.param_grads(omega, cache, dx)

    # -- G = post . L_omega . pre, with L linear in omega ----------------
    @property
    def feedback_is_affine(self) -> bool:
        """True when G = post(L_omega(pre(y)) + c) with pre parameter-free and
        post linear: then G(a) - G(b) = post(L_omega(pre(a) - pre(b))) and the
        feedback bias c cancels from every difference (docs/algorithm.md §4.1, §4.2)."""
        k = self.G.param_index
        post = self.G.ops[k + 1:] if k is not None else ()
        return (k is not None and self.G.ops[k].linear
                and all(op.linear and not op.needs_route for op in post))

    def feedback_features(self, y, route):
        """u = pre(y), the input of G's weight layer (ELU(unpool(y)) for a conv block)."""
        k = self.G.param_index
        for i, op in enumerate(self.G.ops[:k]):
            y, _ = op.forward({}, y, route[i])
        return y

    def feedback_linear(self, omega, u):
        """post(L_omega u) without the bias: the part of G that is linear in u and omega."""
        k = self.G.param_index
        out, _ = self.G.ops[k].forward({"weight": omega["weight"]}, u)
        for op in self.G.ops[k + 1:]:
            out, _ = op.forward({}, out)
        return out

    def feedback_difference(self, omega, a, b, route_a, route_b=None):
        """G(a; route_a) - G(b; route_b) (route_b defaults to route_a).

        For an affine G this is post(L_omega(pre(a) - pre(b))): one weight-layer
        evaluation instead of two, and the bias cancels exactly.
        """
        route_b = route_a if route_b is None else route_b
        if self.feedback_is_affine:
            du = self.feedback_features(a, route_a) - self.feedback_features(b, route_b)
            return self.feedback_linear(omega, du)
        return self.feedback(omega, a, route_a)[0] - self.feedback(omega, b, route_b)[0]

    def difference_grads(self, omega, du, dx) -> dict:
        """d<dx, G(a) - G(b)>/d omega for du = pre(a) - pre(b), i.e. the gradient
        of <dx, post(L_omega du)>. The bias cancels: its gradient is exactly 0.

        Args:
            du: (B, *u_shape) feature difference; dx: (B, *in_shape) upstream signal.
        """
        k = self.G.param_index
        for op in reversed(self.G.ops[k + 1:]):
            dx = op.vjp({}, None, dx)
        grads = self.G.ops[k].param_grads({"weight": omega["weight"]}, du, dx)
        if "bias" in omega:
            grads["bias"] = array_module(omega["bias"]).zeros_like(omega["bias"])
        return grads

    def __repr__(self) -> str:
        return f"Block({self.name}: F = {self.F!r}; G = {self.G!r})"


def with_feedback_activation(forward_ops: Sequence[Op], activation: str) -> list[Op]:
    """``invert(forward_ops)`` with every activation replaced by ``activation``.

    Used for the exact-JMC feedback of docs/theory.md §3.4: with
    activation = phi such that phi'(s(a)) = s'(a), G's Jacobian carries the
    sample-dependent diag(s'(a)) and can equal J_F^T.
    """
    return [Act(op.in_shape, activation) if isinstance(op, Act) else op for op in invert(forward_ops)]

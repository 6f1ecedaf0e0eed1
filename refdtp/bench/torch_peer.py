"""The benchmark's peer: the same SimpleVGG step in plain PyTorch with autograd.

Written as a user of the official code (ernoult/scalingDTP) would write it:
per feedback iteration F(x + eps) and F(x) again (the official code re-runs
F(x) to restore the pool indices), three evaluations of G, and one autograd
backward through them; per-block SGD optimisers; targets under no_grad;
block-local forward losses with detached inputs. float32, same shapes,
iterations and noise scales as refdtp's step. PyTorch is never a dependency
of refdtp: this module is imported only by ``python -m refdtp.bench --peer torch``.

Two variants (:data:`VARIANTS`): "official" as above, and "competent", which
keeps the clean pool indices of the first forward pass instead of re-running
F(x) every feedback iteration (nothing else changed). TF32 is switched off
(:func:`configure`): refdtp computes in true float32, so must the peer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as tf
from torch import nn


class PeerSimpleVGG:
    """SimpleVGG forward blocks and their feedback (unpool -> ELU -> conv-transpose)."""

    def __init__(self, channels, num_classes: int, in_shape=(3, 32, 32), seed: int = 0,
                 device: str = "cpu"):
        torch.manual_seed(seed)
        c, h = in_shape[0], in_shape[1]
        self.convs, self.fb = [], []
        for c_out in channels:
            self.convs.append(nn.Conv2d(c, c_out, 3, padding=1))
            self.fb.append(nn.ConvTranspose2d(c_out, c, 3, padding=1))
            c, h = c_out, h // 2
        self.flat = c * h * h
        self.out_shape = (c, h, h)
        self.fc = nn.Linear(self.flat, num_classes)
        self.fb.append(nn.Linear(num_classes, self.flat))
        self.n_blocks = len(channels) + 1
        for m in self.convs + self.fb + [self.fc]:
            m.to(device)

    def forward_params(self):
        return [p for m in self.convs + [self.fc] for p in m.parameters()]

    def block(self, n: int, x):
        """(s_n, pool indices) for block n (0-based)."""
        if n < len(self.convs):
            return tf.max_pool2d(tf.elu(self.convs[n](x)), 2, 2, return_indices=True)
        return self.fc(x.flatten(1)), None

    def feedback(self, n: int, y, indices):
        if n < len(self.convs):
            u = tf.max_unpool2d(y, indices, 2, 2)
            return self.fb[n](tf.elu(u))
        return self.fb[n](y).reshape((-1,) + self.out_shape)


class PeerStep:
    """L-DRL and BP steps of the peer with the paper's optimisers."""

    def __init__(self, net: PeerSimpleVGG, iterations, sigmas, fb_lrs, beta=0.7, lr=0.05):
        self.net, self.iterations, self.sigmas, self.beta = net, iterations, sigmas, beta
        self.fb_opts = [torch.optim.SGD(net.fb[n].parameters(), lr=fb_lrs[n - 1], momentum=0.9)
                        for n in range(1, net.n_blocks)]
        self.opt = torch.optim.SGD(net.forward_params(), lr=lr, momentum=0.9, weight_decay=1e-4)

    def _forward_all(self, x):
        s, idx = [x], []
        for n in range(self.net.n_blocks):
            y, i = self.net.block(n, s[-1])
            s.append(y)
            idx.append(i)
        return s, idx

    def _clean_indices(self, n: int, xn, first_pass):
        """The official code re-runs F(x) to restore the clean pool indices."""
        return self.net.block(n, xn)[1]

    def ldrl(self, x, labels):
        net, B = self.net, x.shape[0]
        with torch.no_grad():
            s, idx = self._forward_all(x)
        for n in range(1, net.n_blocks):
            xn, yn, sigma = s[n], s[n + 1], self.sigmas[n - 1]
            for _ in range(self.iterations[n - 1]):
                eps, eta = torch.randn_like(xn) * sigma, torch.randn_like(yn) * sigma
                with torch.no_grad():
                    y_noisy, i_noisy = net.block(n, xn + eps)
                    i_clean = self._clean_indices(n, xn, idx[n])
                r = net.feedback(n, yn, i_clean)
                loss = (-2 * (eps * (net.feedback(n, y_noisy, i_noisy) - r)).sum()
                        + ((net.feedback(n, yn + eta, i_clean) - r) ** 2).sum()) / B
                self.fb_opts[n - 1].zero_grad()
                loss.backward()
                self.fb_opts[n - 1].step()
        with torch.no_grad():
            t = [None] * (net.n_blocks + 1)
            logits = s[-1]
            t[-1] = logits - self.beta * (torch.softmax(logits, 1) - tf.one_hot(labels, logits.shape[1]))
            for n in range(net.n_blocks - 1, 0, -1):
                t[n] = s[n] + net.feedback(n, t[n + 1], idx[n]) - net.feedback(n, s[n + 1], idx[n])
        loss = sum(0.5 * ((net.block(n, s[n].detach())[0] - t[n + 1]) ** 2).sum()
                   for n in range(net.n_blocks)) / B
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def bp(self, x, labels):
        s, _ = self._forward_all(x)
        loss = tf.cross_entropy(s[-1], labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


class CompetentPeerStep(PeerStep):
    """The same step, keeping the first forward pass's clean pool indices (no F(x) re-run)."""

    def _clean_indices(self, n: int, xn, first_pass):
        return first_pass


VARIANTS = {"official": PeerStep, "competent": CompetentPeerStep}


def configure() -> None:
    """True float32 on the GPU: no TF32 in cuDNN convolutions or cuBLAS matmuls."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def device_for(backend: str) -> str:
    """The torch device matching a refdtp backend ("cupy" -> CUDA)."""
    return "cuda" if backend == "cupy" else "cpu"


def make_peer(channels, num_classes, iterations, sigmas, fb_lrs, seed=0, device="cpu",
              variant: str = "official") -> PeerStep:
    """A peer step ("official" or "competent") on its own copy of the network."""
    configure()
    return VARIANTS[variant](PeerSimpleVGG(channels, num_classes, seed=seed, device=device),
                             iterations, sigmas, fb_lrs)


def as_tensors(x, labels, device="cpu"):
    """Host NumPy arrays -> tensors (float32, int64) on ``device``."""
    return torch.from_numpy(x).to(device), torch.from_numpy(labels.astype("int64")).to(device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_peak_bytes(step, device: str):
    """Peak CUDA memory allocated by PyTorch during one ``step()`` (stats reset first), or None on the CPU."""
    if device != "cuda":
        step()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def threads() -> int:
    return torch.get_num_threads()

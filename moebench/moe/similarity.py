"""Centered kernel alignment (Kornblith et al., 2019) between two sets of representations.

    HSIC(K, L) = sum(HKH * HLH),   H = I - 11^T/n
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

Kernels: linear (K = X X^T) or RBF (K_ab = exp(-|x_a - x_b|^2 / 2 sigma^2)), as in SimSMoE's
losses/cka.py. All functions are differentiable torch code: SimSMoE trains through them.

With a fixed sigma (SimSMoE's 0.8, kept in its loss as its code has it) RBF CKA measures the
outputs' scale as much as their similarity: independent 4-d outputs score 0.09 at scale 0.1,
0.57 at 1 and 0.98 at 3. `sigma=None` takes each set's bandwidth from its own median pairwise
distance (Kornblith et al. 2019, section 3), which makes the index scale-free, as linear CKA
and cosine similarity, the probe's diagnostics, already are (tests/test_similarity.py).
"""
from __future__ import annotations

import torch


def center_gram(gram: torch.Tensor) -> torch.Tensor:
    """H K H without forming H: subtract row and column means, add back the grand mean."""
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def rbf_gram(x: torch.Tensor, sigma: float) -> torch.Tensor:
    sq_dist = torch.cdist(x, x).square()  # (n, n)
    return torch.exp(-sq_dist / (2 * sigma * sigma))


def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    return torch.sum(center_gram(k) * center_gram(l))


def safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, guarding only against an exact zero: HSICs of nearly flat RBF
    kernels are tiny but meaningful, so an additive epsilon would distort them."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    return safe_ratio(hsic(k, l), torch.sqrt(hsic(k, k) * hsic(l, l)))


def median_distance(x: torch.Tensor) -> torch.Tensor:
    """The median distance between distinct rows of x: a bandwidth that scales with the data."""
    n = len(x)
    distances = torch.cdist(x, x)[torch.triu_indices(n, n, offset=1, device=x.device).unbind()]
    return distances.median().clamp_min(torch.finfo(x.dtype).tiny)


def kernel_cka(x: torch.Tensor, y: torch.Tensor, sigma: float | None = 0.8) -> torch.Tensor:
    """RBF CKA with a fixed bandwidth, or with `sigma=None` each set's median distance."""
    if sigma is None:
        return cka_from_grams(rbf_gram(x, median_distance(x)), rbf_gram(y, median_distance(y)))
    return cka_from_grams(rbf_gram(x, sigma), rbf_gram(y, sigma))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA in feature space: |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F) on centred columns.

    Equal to cka_from_grams(X X^T, Y Y^T) but O(n d^2) instead of O(n^2 d): the diagnostics
    compare experts on thousands of tokens.
    """
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x).square()
    return safe_ratio(cross, torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


def mean_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the cosine similarity between two experts' outputs for that token."""
    return torch.nn.functional.cosine_similarity(x, y, dim=-1).mean()

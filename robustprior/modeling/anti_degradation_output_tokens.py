"""Anti-Degradation Output Token Generation (AOTG), paper Sec. 3.2.2.

The Robust Output Tokens (ROT) leave SAM's two-way transformer as ``P x T x D`` (P prompts,
T = 4 mask tokens, D = transformer width). AOTG normalises each token with instance
normalisation over its D features (the release stacks two such layers), then a two-layer MLP
maps it to a token the robust MLP turns into a dynamic mask classifier.

``token_mode`` selects how much of the token the MLP sees:

* ``"paper"``: the whole token, MLP ``D -> D -> D``.
* ``"release"``: the official release's semantics. It views each normalised ``1 x D`` token as
  ``T`` rows of ``D / T`` features and runs the MLP ``D/T -> D/T -> D`` on each row; the
  single-mask output is row 0 of token 0 and the multimask outputs are row 0 of tokens 1..3, so
  only the first ``D / T`` features of each normalised token ever reach a classifier. We compute
  exactly those rows, batched over prompts. Official checkpoints need this mode.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TokenMode = Literal["paper", "release"]
TOKEN_MODES: tuple[str, ...] = ("paper", "release")


class AntiDegradationOutputTokens(nn.Module):
    """``P x T x D -> P x T x D`` robust tokens for the robust MLP."""

    def __init__(
        self,
        token_dim: int,
        num_tokens: int = 4,
        num_instance_norms: int = 2,
        token_mode: TokenMode = "paper",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"unknown token mode {token_mode!r}; expected one of {TOKEN_MODES}")
        if token_mode == "release" and token_dim % num_tokens:
            raise ValueError(f"release token mode needs token_dim ({token_dim}) divisible by num_tokens ({num_tokens})")
        self.token_mode = token_mode
        self.num_instance_norms = num_instance_norms
        self.eps = eps
        self.features_in = token_dim // num_tokens if token_mode == "release" else token_dim
        self.mlp = nn.Sequential(
            nn.Linear(self.features_in, self.features_in), nn.ReLU(), nn.Linear(self.features_in, token_dim)
        )

    @torch.no_grad()
    def start_as_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Paper mode: set the MLP so that ``AOTG(t) == weight * IN(t) + bias`` (``D``-vectors).

        The first layer adds ``sqrt(D)`` to the normalised token, more than any of its entries can
        be negative, so the ReLU passes it unchanged; the second layer scales and shifts back."""
        if self.token_mode != "paper":
            raise ValueError("start_as_affine needs token_mode='paper' (the release's MLP sees only part of a token)")
        first, _, second = self.mlp
        dim = first.in_features
        if weight.shape != (dim,) or bias.shape != (dim,):
            raise ValueError(f"weight and bias must have shape ({dim},), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        offset = float(dim) ** 0.5
        first.weight.copy_(torch.eye(dim))
        first.bias.fill_(offset)
        second.weight.copy_(torch.diag(weight))
        second.bias.copy_(bias - offset * weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_instance_norms):  # instance norm of a token = norm over its features
            tokens = F.layer_norm(tokens, tokens.shape[-1:], eps=self.eps)
        return self.mlp(tokens[..., : self.features_in])

    def extra_repr(self) -> str:
        return f"token_mode={self.token_mode!r}, instance_norms={self.num_instance_norms}"

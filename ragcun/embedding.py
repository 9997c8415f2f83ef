"""The value a head returns: a mean vector and, for Gaussian heads, a per-dimension log-variance."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Embedding:
    mean: torch.Tensor  # (B, D)
    logvar: torch.Tensor | None = None  # (B, D), per-dimension log sigma^2; None for point embeddings

    @property
    def fields(self) -> set[str]:
        return {"mean"} | ({"logvar"} if self.logvar is not None else set())

    @property
    def sigma(self) -> torch.Tensor:
        if self.logvar is None:
            raise ValueError("this embedding has no log-variance; use a head that provides one "
                             "(--head gaussian --set head.gaussian.logvar=true)")
        return torch.exp(0.5 * self.logvar)

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __getitem__(self, index) -> Embedding:
        return Embedding(self.mean[index], None if self.logvar is None else self.logvar[index])

    @staticmethod
    def cat(items: list[Embedding]) -> Embedding:
        has_logvar = [e.logvar is not None for e in items]
        if any(has_logvar) and not all(has_logvar):
            raise ValueError("cannot concatenate embeddings with and without log-variance")
        return Embedding(torch.cat([e.mean for e in items]),
                         torch.cat([e.logvar for e in items]) if all(has_logvar) and items else None)

    def truncate(self, dim: int) -> Embedding:
        """The first ``dim`` coordinates (of the mean, and of the log-variance): a Matryoshka prefix."""
        return Embedding(self.mean[..., :dim], None if self.logvar is None else self.logvar[..., :dim])

    def detach(self) -> Embedding:
        return Embedding(self.mean.detach(), None if self.logvar is None else self.logvar.detach())

    def to(self, *args, **kwargs) -> Embedding:
        return Embedding(self.mean.to(*args, **kwargs),
                         None if self.logvar is None else self.logvar.to(*args, **kwargs))

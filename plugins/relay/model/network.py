"""The ETA network: an MLP over the order's context with a physically shaped output.

``minutes = base(context) + weather_offset[w] + distance_km * pace(context) * weather_pace[w]``

``pace`` is positive (softplus) and the weather terms are cumulative sums of positive steps, so
a longer distance or worse weather can never lower the prediction: the behaviour couriers and
customers expect is guaranteed by construction, not hoped for from the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetConfig:
    n_numeric: int
    cardinalities: tuple[int, ...]
    hidden_layers: int = 3
    hidden_units: int = 128
    dropout: float = 0.1
    activation: str = "relu"
    label_mean: float = 40.0
    label_std: float = 15.0
    n_weather: int = 4

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cardinalities"] = list(self.cardinalities)
        return d


def _embedding_dim(cardinality: int) -> int:
    return int(min(16, max(2, round(1.6 * cardinality**0.56))))


class ETANet(nn.Module):
    """Embeddings + MLP trunk with a base head and a pace head."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [_embedding_dim(c) for c in cfg.cardinalities]
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, d) for c, d in zip(cfg.cardinalities, dims, strict=True)
        )
        width = cfg.n_numeric + sum(dims)
        act: type[nn.Module] = nn.ReLU if cfg.activation == "relu" else nn.Tanh
        layers: list[nn.Module] = []
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_units), act(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden_units
        self.trunk = nn.Sequential(*layers)
        self.base = nn.Linear(width, 1)
        self.pace = nn.Linear(width, 1)
        # Positive steps between weather levels (clear -> cloudy -> rain -> storm).
        self.offset_steps = nn.Parameter(torch.full((cfg.n_weather - 1,), -2.0))
        self.pace_steps = nn.Parameter(torch.full((cfg.n_weather - 1,), -3.0))
        nn.init.constant_(self.pace.bias, 0.5)

    def forward(
        self,
        numeric: torch.Tensor,
        categorical: torch.Tensor,
        distance: torch.Tensor,
        weather: torch.Tensor,
    ) -> torch.Tensor:
        """Predicted delivery minutes, shape [n]."""
        parts = [numeric] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        h = self.trunk(torch.cat(parts, dim=1))
        zero = torch.zeros(1, device=h.device, dtype=self.offset_steps.dtype)
        offsets = torch.cat([zero, torch.cumsum(F.softplus(self.offset_steps), 0)])
        paces = 1 + torch.cat([zero, torch.cumsum(F.softplus(self.pace_steps), 0)])
        base = self.cfg.label_mean + self.cfg.label_std * self.base(h).squeeze(1)
        # Minutes per km, scaled so that an untrained net starts near a plausible pace.
        pace = F.softplus(self.pace(h).squeeze(1)) * 4.0
        w = weather.clamp(0, self.cfg.n_weather - 1)
        return base + offsets[w] * self.cfg.label_std * 0.2 + distance * pace * paces[w]


def huber_loss(pred: torch.Tensor, target: torch.Tensor, label_std: float) -> torch.Tensor:
    """Huber loss on standardised minutes (robust to the long tail of late deliveries)."""
    return F.huber_loss(pred / label_std, target / label_std, delta=1.0)

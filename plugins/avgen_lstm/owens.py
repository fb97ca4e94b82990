"""owens_lstm: Owens et al. 2016's regressor; the LSTM predicts the representation directly (s' = d)."""

from __future__ import annotations

import torch
from torch import nn

from avgen.protocols import GeneratorShape
from avgen_lstm.backbone import FrameLSTM, LstmParams


class OwensLSTM(nn.Module):
    """LSTM over replicated frame features with a linear projection to d_s per step."""

    uses_base_samples = False

    def __init__(self, params: LstmParams, shape: GeneratorShape) -> None:
        super().__init__()
        self.shape = shape
        self.net = FrameLSTM(params, shape.feature_dim, shape.steps, shape.rep_dim)

    def set_base_samples(self, reps: torch.Tensor, labels: torch.Tensor) -> None:
        """No base samples: the regressor predicts the whole representation."""

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        residual = self.net(features).transpose(1, 2)  # [B, D, F]
        return {"rep": residual, "residual": residual}


def make_owens_lstm(params: LstmParams, shape: GeneratorShape, **context: object) -> OwensLSTM:
    return OwensLSTM(params, shape)

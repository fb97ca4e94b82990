"""owens_lstm: Owens et al. 2016's regressor; the LSTM predicts the representation directly (s' = d)."""

from __future__ import annotations

import torch

from avgen import BuildContext, Generator, GeneratorShape
from avgen_lstm.backbone import FrameLSTM, LstmParams


class OwensLSTM(Generator):
    """LSTM over replicated frame features with a linear projection to d_s per step."""

    def __init__(self, params: LstmParams, shape: GeneratorShape) -> None:
        super().__init__()
        self.shape = shape
        self.net = FrameLSTM(params, shape.feature_dim, shape.steps, shape.rep_dim)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        residual = self.net(features).transpose(1, 2)  # [B, D, F]
        return {"rep": residual, "residual": residual}


def make_owens_lstm(params: LstmParams, context: BuildContext) -> OwensLSTM:
    return OwensLSTM(params, context.require_shape("owens_lstm"))

"""owens_lstm: Owens et al. 2016's regressor; the LSTM predicts the representation directly (s' = d)."""

from __future__ import annotations

from typing import Mapping

import torch

from avgen import BuildContext, Generator, GeneratorShape
from avgen_lstm.backbone import FrameLSTM, LstmParams, mean_per_bin


class OwensLSTM(Generator):
    """LSTM over replicated frame features with a linear projection to d_s per step."""

    provides = frozenset({"rep", "residual"})

    def __init__(self, params: LstmParams, shape: GeneratorShape) -> None:
        super().__init__()
        self.shape = shape
        self.net = FrameLSTM(params, shape.feature_dim, shape.steps, shape.rep_dim)

    def prepare(self, train: Mapping[str, torch.Tensor]) -> None:
        """Start at the training mean: the projection bias is the mean training representation of each bin.

        The paper is silent on biases; with zero biases Adam needs thousands of steps of ~lr to
        lift every output to the spectrogram's scale, and a short run ends near zero (docs/generators.md).
        """
        with torch.no_grad():
            self.net.project.bias.copy_(mean_per_bin(train["rep"]).to(self.net.project.bias))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        residual = self.net(features).transpose(1, 2)  # [B, D, F]
        return {"rep": residual, "residual": residual}


def make_owens_lstm(params: LstmParams, context: BuildContext) -> OwensLSTM:
    return OwensLSTM(params, context.require_shape("owens_lstm"))

"""The shared part of both generators: replicate frames, run the LSTM, project each step."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from avgen import replicate_to_steps


class LstmParams(BaseModel):
    """Params of the LSTM generators (paper: one layer, d_h = 128)."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=1, le=65536, description="LSTM hidden size d_h (paper: 128)")
    layers: int = Field(1, ge=1, le=16, description="stacked LSTM layers (paper: 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LSTM outputs and between stacked layers (paper: 0)")
    bidirectional: bool = Field(False, description="run the LSTM in both time directions (paper: no)")


class CanParams(LstmParams):
    """Params of can_lstm: the LSTM options plus how the base sample is chosen."""

    base: Literal["hard", "soft"] = Field(
        "hard", description="'hard': s' = d + A_argmax(p) (paper Eq. 5); 'soft': s' = d + sum_j p_j A_j"
    )
    teacher_forcing: bool = Field(False, description="in training, add the true class's base sample (paper: off)")


class FrameLSTM(nn.Module):
    """features [B, N, feature_dim] -> per-step projections [B, steps, out_dim] (paper Eq. 2-3)."""

    def __init__(self, params: LstmParams, feature_dim: int, steps: int, out_dim: int) -> None:
        super().__init__()
        self.steps = steps
        self.lstm = nn.LSTM(
            input_size=feature_dim,
            hidden_size=params.hidden,
            num_layers=params.layers,
            dropout=params.dropout if params.layers > 1 else 0.0,
            bidirectional=params.bidirectional,
            batch_first=True,
        )
        self.dropout = nn.Dropout(params.dropout)
        self.project = nn.Linear(params.hidden * (2 if params.bidirectional else 1), out_dim)
        xavier_init(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"features must be [B, N, feature_dim], got shape {tuple(features.shape)}")
        steps = replicate_to_steps(features, self.steps)
        hidden, _ = self.lstm(steps)
        return self.project(self.dropout(hidden))


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every LSTM and Linear inside ``module``."""
    for name, param in module.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("weight"):
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)


def mean_per_bin(reps: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """[D] mean of reps [M, D, F] over clips and frames (float64 sums over chunks of clips)."""
    total = torch.zeros(reps.shape[1], dtype=torch.float64, device=reps.device)
    for start in range(0, reps.shape[0], chunk):
        total += reps[start : start + chunk].to(torch.float64).sum(dim=(0, 2))
    return (total / max(1, reps.shape[0] * reps.shape[2])).to(torch.float32)

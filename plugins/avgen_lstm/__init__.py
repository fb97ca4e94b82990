"""LSTM generators (owens_lstm, can_lstm) and their losses (class_nll, spec_smooth_l1)."""

from __future__ import annotations

from avgen import hookimpl
from avgen_lstm.backbone import CanParams, LstmParams
from avgen_lstm.can import CanLSTM, make_can_lstm
from avgen_lstm.losses import ClassNll, ClassNllParams, SmoothL1Params, SpecSmoothL1, make_class_nll, make_spec_smooth_l1
from avgen_lstm.owens import OwensLSTM, make_owens_lstm

PAPER = "Chen et al. 2018 (POCAN), ECCV 2018 Workshops (MULA), doi:10.1007/978-3-030-11024-6_43"
OWENS = "Owens et al. 2016, Visually Indicated Sounds, CVPR"

__all__ = ["CanLSTM", "CanParams", "ClassNll", "LstmParams", "OwensLSTM", "SpecSmoothL1"]


@hookimpl
def register_generators(register):
    register(
        "owens_lstm", make_owens_lstm, params=LstmParams,
        summary="LSTM over frame features regressing the representation directly (Owens et al. 2016)",
        card={"paper": OWENS, "equation": "s' = d (no class head, no base sample)", "license": "MIT"},
    )
    register(
        "can_lstm", make_can_lstm, params=CanParams,
        summary="LSTM predicting the sound class and a residual over the class's mean representation (CAN/POCAN)",
        card={"paper": PAPER, "equation": "Eq. 3-5: p = mean softmax, s' = d + A_argmax(p)", "license": "MIT"},
    )


@hookimpl
def register_losses(register):
    register(
        "class_nll", make_class_nll, params=ClassNllParams,
        summary="-log p[c]: negative log of the true class's step-averaged probability (needs can_lstm)",
        card={"paper": PAPER, "equation": "Eq. 4"},
    )
    register(
        "spec_smooth_l1", make_spec_smooth_l1, params=SmoothL1Params,
        summary="smooth-L1 (beta 1) between the generated and the real representation, averaged (reduction \"mean\"; \"sum_per_clip_mean\" sums per clip)",
        card={"paper": PAPER, "equation": "Eq. 6"},
    )

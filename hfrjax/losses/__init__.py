"""Losses: combined-margin softmax (ArcFace/CosFace/SphereFace), regularisers, and the
normalised classifier head with freezing helpers. Classifier weights are [C, D] rows."""

from hfrjax.losses.heads import (
    NormalizedClassifier,
    class_mean_rows,
    classifier_params_from_rows,
    freeze,
    freeze_labels,
    rows_initializer,
)
from hfrjax.losses.margin import (
    MARGIN_PRESETS,
    MarginConfig,
    check_labels,
    combined_margin_logits,
    cosine_logits,
    get_margin_preset,
    l2_normalize,
    margin_softmax_loss,
    margin_softmax_loss_from_cosine,
    margin_target,
)
from hfrjax.losses.regularizers import l2_sp_regularizer, ml2_regularizer

__all__ = [
    "MARGIN_PRESETS",
    "MarginConfig",
    "NormalizedClassifier",
    "check_labels",
    "class_mean_rows",
    "classifier_params_from_rows",
    "combined_margin_logits",
    "cosine_logits",
    "freeze",
    "freeze_labels",
    "get_margin_preset",
    "l2_normalize",
    "l2_sp_regularizer",
    "margin_softmax_loss",
    "margin_softmax_loss_from_cosine",
    "margin_target",
    "ml2_regularizer",
    "rows_initializer",
]

"""Evaluation: exact verification / identification / re-id metrics and k-fold protocols."""

from hfrjax.eval.metrics import (
    BlockScores,
    ScoreHistogram,
    aggregate,
    auc,
    cmc,
    eer,
    map_minp,
    mean_std,
    rank1,
    roc_curve,
    score_blocks,
    tar_at_far,
    verification_metrics,
    verification_metrics_from_histogram,
)
from hfrjax.eval.protocols import embed_keys, evaluate_protocol, format_table

__all__ = [
    "BlockScores",
    "ScoreHistogram",
    "aggregate",
    "auc",
    "cmc",
    "eer",
    "embed_keys",
    "evaluate_protocol",
    "format_table",
    "map_minp",
    "mean_std",
    "rank1",
    "roc_curve",
    "score_blocks",
    "tar_at_far",
    "verification_metrics",
    "verification_metrics_from_histogram",
]

"""Evaluation: exact verification / identification / re-id metrics and k-fold protocols."""

from hfrjax.eval.metrics import (
    BlockScores,
    ExactPairScores,
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
)
from hfrjax.eval.protocols import embed_keys, evaluate_protocol, format_table

__all__ = [
    "BlockScores",
    "ExactPairScores",
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
]

"""Losses: combined-margin softmax (ArcFace/CosFace/SphereFace), regularisers, the
normalised classifier head with freezing helpers, and the recipe losses (gradient reversal,
TOPLight's domain-conflict losses, batch-hard triplet, SSN's Jensen-Shannon MI and
information bottleneck, CSAN's pseudo-triplet and sparsity, FTL's reconstruction objective).
Classifier weights are [C, D] rows."""

from hfrjax.losses.cross_spectral_unsupervised import (
    csan_loss,
    pixel_channel_sparsity,
    pseudo_triplet_loss,
)
from hfrjax.losses.domain_conflict import (
    LogisticDomainClassifier,
    fake_domain_loss,
    identity_consistency_loss,
    logistic_domain_loss,
    task_oriented_pretraining_loss,
)
from hfrjax.losses.gradient_reversal import grad_reverse
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
from hfrjax.losses.mutual_information import (
    JensenShannonCritic,
    information_bottleneck_loss,
    jensen_shannon_mi,
    marginal_permutation,
    mi_critic_loss,
)
from hfrjax.losses.reconstruction import ftl_loss, reconstruction_loss
from hfrjax.losses.regularizers import l2_sp_regularizer, ml2_regularizer
from hfrjax.losses.triplet import batch_hard_triplet_loss, pairwise_euclidean_distances

__all__ = [
    "JensenShannonCritic",
    "LogisticDomainClassifier",
    "MARGIN_PRESETS",
    "MarginConfig",
    "NormalizedClassifier",
    "batch_hard_triplet_loss",
    "check_labels",
    "class_mean_rows",
    "classifier_params_from_rows",
    "combined_margin_logits",
    "cosine_logits",
    "csan_loss",
    "fake_domain_loss",
    "freeze",
    "freeze_labels",
    "ftl_loss",
    "get_margin_preset",
    "grad_reverse",
    "identity_consistency_loss",
    "information_bottleneck_loss",
    "jensen_shannon_mi",
    "l2_normalize",
    "l2_sp_regularizer",
    "logistic_domain_loss",
    "margin_softmax_loss",
    "margin_softmax_loss_from_cosine",
    "margin_target",
    "marginal_permutation",
    "mi_critic_loss",
    "ml2_regularizer",
    "pairwise_euclidean_distances",
    "pixel_channel_sparsity",
    "pseudo_triplet_loss",
    "reconstruction_loss",
    "rows_initializer",
    "task_oriented_pretraining_loss",
]

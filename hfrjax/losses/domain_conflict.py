"""TOPLight's task-oriented pretraining losses (§3.2): the logistic domain loss L_d, the
fake-domain loss L_fd (Eq. 1-2), the identity-consistency loss L_idc (Eq. 3) and their sum
(Eq. 4), plus the small logistic domain classifier they use.

In the dual-path network, x_i is the output of Block4-i (a feature map) and x_hat_i the
output of Block7 for the same path. Each path is given a fake domain label d_i (e.g. 0 for the
colour path, 1 for the texture path). L_d(x_i, d_i) trains the mid-level features to be
domain-specific; L_d(GRL(x_hat_i), d_i) trains the *final* domain classifier normally while
the reversed gradient pushes Block5-7 to make the two paths indistinguishable.

The mid-level maps and the final features differ in shape, so a training task uses two
``LogisticDomainClassifier`` instances: one on Block4 outputs, one ("the final domain
classifier" of §3.2) on Block7 outputs; each is shared by both paths.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hfrjax.losses.gradient_reversal import grad_reverse
from hfrjax.losses.margin import check_labels

Array = jax.Array
LogitFn = Callable[[Array], Array]


class LogisticDomainClassifier(nn.Module):
    """Logistic regression on features: one logit per sample ([B]).

    TOPLight §3.2: "L_d denotes the domain classification loss implemented with the logistic
    classifier". A feature map [B, H, W, C] (NHWC) is global-average-pooled first; any other
    input is flattened to [B, -1].
    """

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Array) -> Array:
        x = jnp.asarray(features, jnp.float32)
        if x.ndim == 4:
            x = jnp.mean(x, axis=(1, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(1, param_dtype=self.param_dtype, name="logit")(x)[:, 0]


def logistic_domain_loss(logits: Array, domains: Array | int) -> Array:
    """L_d: mean binary cross-entropy of domain ``logits`` [B] against labels in {0, 1}.

    ``domains`` is [B] or one label for the whole batch (a path's fake domain).
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    chex.assert_rank(logits, 1)
    domains = jnp.asarray(domains)
    if domains.ndim not in (0, 1) or (domains.ndim == 1 and domains.shape != logits.shape):
        raise ValueError(
            f"domains must be a scalar or shape {logits.shape}, got shape {domains.shape}"
        )
    check_labels(domains, 2)
    targets = jnp.broadcast_to(domains.astype(jnp.float32), logits.shape)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def fake_domain_loss(
    mid_classifier: LogitFn,
    final_classifier: LogitFn,
    mid_features: Array,
    final_features: Array,
    domain: Array | int,
    *,
    reversal_scale: Any = 1.0,
) -> Array:
    """L_fd^i = L_d(x_i, d_i) + L_d(GRL(x_hat_i), d_i) (TOPLight Eq. 1-2) for one path.

    Args:
      mid_classifier: features -> domain logits [B] for Block4 outputs (e.g.
        ``lambda x: LogisticDomainClassifier().apply({'params': p_mid}, x)``).
      final_classifier: the same for Block7 outputs.
      mid_features: x_i, Block4-i output of this path.
      final_features: x_hat_i, Block7 output of this path.
      domain: this path's fake domain label d_i (0 or 1), scalar or [B].
      reversal_scale: the GRL's lambda (may be traced, e.g. a schedule).
    """
    self_domain = logistic_domain_loss(mid_classifier(mid_features), domain)
    reversed_final = grad_reverse(final_features, reversal_scale)
    inverted_domain = logistic_domain_loss(final_classifier(reversed_final), domain)
    return self_domain + inverted_domain


def _softmax_ce(features: Array, weights: Array, bias: Array | None, labels: Array) -> Array:
    logits = jnp.einsum("bd,cd->bc", features.astype(jnp.float32), weights.astype(jnp.float32))
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def identity_consistency_loss(
    final_features_1: Array,
    final_features_2: Array,
    weights: Array,
    labels: Array,
    bias: Array | None = None,
) -> Array:
    """L_idc (TOPLight Eq. 3): cross-entropy of ONE shared linear classifier on both paths'
    final features, summed over the two paths (batch mean each).

    Eq. 3 prints log P(y|p(x_hat_1)) + log P(y|p(x_hat_2)) without a minus sign; as a loss
    that is minimised it is the negative log-likelihood, which is what this returns.

    ``weights`` [C, D] uses this library's one-row-per-class layout (a flax ``nn.Dense``
    kernel is [D, C]: pass ``kernel.T``); ``bias`` [C] optional; ``labels`` [B] in [0, C).
    """
    chex.assert_rank([final_features_1, final_features_2, weights], 2)
    chex.assert_equal_shape([final_features_1, final_features_2])
    chex.assert_equal_shape_suffix([final_features_1, weights], 1)
    chex.assert_shape(labels, (final_features_1.shape[0],))
    if bias is not None:
        chex.assert_shape(bias, (weights.shape[0],))
    check_labels(labels, weights.shape[0])
    return _softmax_ce(final_features_1, weights, bias, labels) + _softmax_ce(
        final_features_2, weights, bias, labels
    )


def task_oriented_pretraining_loss(
    identity_consistency: Array, fake_domain_1: Array, fake_domain_2: Array
) -> Array:
    """L = L_idc + L_fd^1 + L_fd^2 (TOPLight Eq. 4), all terms with weight 1 as in the paper."""
    return identity_consistency + fake_domain_1 + fake_domain_2

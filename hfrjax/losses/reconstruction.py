"""FTL's encoder-decoder objective: the reconstruction loss (§3.2, Eq. 1) and the combined
training loss L = a_sfmx L_sfmx + a_recon L_recon + a_reg L_reg (Eq. 4).

The reconstruction term keeps non-identity variation (pose, expression, lighting) in the
rich feature g = Enc(x), which the feature transfer (Eq. 7) then moves between classes.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from hfrjax.losses.margin import check_labels
from hfrjax.losses.regularizers import ml2_regularizer

Array = jax.Array


def reconstruction_loss(
    reconstructed: Array, images: Array, *, reduction: str = "sum"
) -> Array:
    """L_recon = ||x' - x||_2^2 (FTL Eq. 1), averaged over the batch.

    ``reduction="sum"`` (default) is Eq. 1 as printed: the squared error summed over all
    pixels and channels of an image. ``"mean"`` divides by the number of elements per image
    (PyTorch's MSELoss); it changes the balance against the softmax term in Eq. 4 by that
    factor. ``reconstructed`` and ``images`` [B, H, W, C] (any equal shapes with a batch axis).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if reconstructed.shape != images.shape:
        raise ValueError(
            f"reconstruction_loss: reconstructed shape {reconstructed.shape} != images shape "
            f"{images.shape}"
        )
    diff = jnp.asarray(reconstructed, jnp.float32) - jnp.asarray(images, jnp.float32)
    per_image = jnp.sum(jnp.square(diff).reshape(diff.shape[0], -1), axis=1)
    if reduction == "mean":
        per_image = per_image / (diff.size // diff.shape[0])
    return jnp.mean(per_image)


def ftl_loss(
    features: Array,
    weights: Array,
    labels: Array,
    *,
    bias: Array | None = None,
    reconstructed: Array | None = None,
    images: Array | None = None,
    alpha_softmax: float = 1.0,
    alpha_recon: float = 1.0,
    alpha_reg: float = 0.25,
    recon_reduction: str = "sum",
) -> tuple[Array, dict[str, Array]]:
    """FTL Eq. 4: alpha_sfmx L_sfmx + alpha_recon L_recon + alpha_reg L_reg (1, 1, 0.25).

    Args:
      features: f = R(g) [B, D].
      weights: classifier W [C, D] (this library's one-row-per-class layout).
      labels: [B] class ids in [0, C).
      bias: optional classifier bias [C] (Eq. 2 has none).
      reconstructed, images: x' = Dec(g) and x; both or neither. Without them (stage 1 of
        Alg. 1 trains R and FC with Eq. 2 and 3 only, e.g. on transferred features) the
        reconstruction term is 0.
      recon_reduction: see ``reconstruction_loss``.

    L_sfmx is plain softmax cross-entropy on W f (Eq. 2); L_reg is the m-L2 regulariser
    ``ml2_regularizer`` (Eq. 3, the squared norm of the classifier output W f).
    Returns (total, {"softmax", "recon", "reg"}) with the unweighted terms.
    """
    chex.assert_rank([features, weights], 2)
    chex.assert_equal_shape_suffix([features, weights], 1)
    chex.assert_shape(labels, (features.shape[0],))
    check_labels(labels, weights.shape[0])
    if (reconstructed is None) != (images is None):
        raise ValueError("ftl_loss: pass both reconstructed and images, or neither")

    logits = jnp.einsum("bd,cd->bc", features.astype(jnp.float32), weights.astype(jnp.float32))
    if bias is not None:
        chex.assert_shape(bias, (weights.shape[0],))
        logits = logits + bias.astype(jnp.float32)
    softmax = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    reg = ml2_regularizer(features, weights, bias)
    if reconstructed is None:
        recon = jnp.zeros((), jnp.float32)
    else:
        recon = reconstruction_loss(reconstructed, images, reduction=recon_reduction)
    total = alpha_softmax * softmax + alpha_recon * recon + alpha_reg * reg
    return total, {"softmax": softmax, "recon": recon, "reg": reg}

"""Jensen-Shannon mutual-information estimation and SSN's information-bottleneck loss.

SSN ("Partial NIR-VIS HFR with saliency search", §III-B-1, Eq. 5-12) bounds the mutual
information between two representations with a critic network T (Fig. 4) and the
Jensen-Shannon estimator of MINE / Deep InfoMax (Eq. 9, 11):

    I_JS(P; Q) = E_joint[-softplus(-T(p, q))] - E_marginal[softplus(T(p, q_s))],

where joint pairs are (p_i, q_i) from the same image and marginal pairs (p_i, q_s(i)) pair
each p with the q of another image of the batch (Fig. 4: "randomly shuffled Q").

Its value is 2 JSD(joint || product of marginals) - 2 log 2, i.e. in [-2 log 2, 0]:
-2 log 2 for independent inputs at the critic's optimum (T = 0), approaching 0 for a
deterministic relation. ``centered=True`` (default) adds the constant 2 log 2, as Deep
InfoMax's reference code does, so the reading is 0 for independence and at most
2 log 2 ~= 1.386; gradients are identical either way.

The information bottleneck (Eq. 5 / 12) on the outputs of the first and last residual
blocks, Y1 = Y_hat_1 and Y4 = Y_hat_4, with X the input image:

    L_ib = I(X; Y1) - beta * I(Y1; Y4),   beta = 1,

minimised over the network (Y1 forgets the input, keeps what predicts Y4) while each MI
estimate is the *supremum* over its critic. Note the sign: the caption of the paper's Fig. 3
states the opposite (I(X; Y1) maximised, I(Y1; Y4) minimised); Eq. 5, Eq. 12 and the text
after Eq. 5 agree with each other and with the information-bottleneck principle, and are
what is implemented.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_TWO_LOG_2 = 2.0 * math.log(2.0)


def marginal_permutation(rng: Array, batch_size: int, groups: Array | None = None) -> Array:
    """Indices ``perm`` [B] pairing sample i with sample perm[i] for the marginal term.

    A random cyclic derangement: no sample is paired with itself (which would be a joint
    sample counted as a marginal one). With ``groups`` [B] (e.g. modality ids) each sample is
    paired with another sample of its own group, so the critic cannot separate joint from
    marginal pairs by group alone (SSN estimates I(X^m; Y^m) per modality m). A group with a
    single member pairs it with itself. Deterministic given ``rng``; jit-able.
    """
    if batch_size < 2:
        raise ValueError(f"marginal_permutation needs a batch of at least 2, got {batch_size}")
    if groups is None:
        groups = jnp.zeros((batch_size,), jnp.int32)
    chex.assert_shape(groups, (batch_size,))
    keys = jax.random.uniform(rng, (batch_size,))
    order = jnp.lexsort((keys, groups))  # by group, random within a group
    g = groups[order]
    pos = jnp.arange(batch_size)
    is_start = jnp.concatenate([jnp.array([True]), g[1:] != g[:-1]])
    is_end = jnp.concatenate([g[1:] != g[:-1], jnp.array([True])])
    start = jax.lax.cummax(jnp.where(is_start, pos, 0))
    nxt = jnp.where(is_end, start, pos + 1)
    return jnp.zeros((batch_size,), jnp.int32).at[order].set(order[nxt].astype(jnp.int32))


def jensen_shannon_mi(
    joint_scores: Array, marginal_scores: Array, *, centered: bool = True
) -> Array:
    """I_JS from critic outputs (SSN Eq. 9 / 11): mean(-softplus(-T_joint)) -
    mean(softplus(T_marginal)), plus 2 log 2 when ``centered`` (see the module docstring).

    ``joint_scores`` [B] are T on matched pairs, ``marginal_scores`` [B'] on shuffled pairs.
    """
    joint = jnp.asarray(joint_scores, jnp.float32)
    marginal = jnp.asarray(marginal_scores, jnp.float32)
    chex.assert_rank([joint, marginal], 1)
    value = jnp.mean(-jax.nn.softplus(-joint)) - jnp.mean(jax.nn.softplus(marginal))
    return value + _TWO_LOG_2 if centered else value


class JensenShannonCritic(nn.Module):
    """The MI critic T of SSN Fig. 4.

    Two input branches (Block1 for P, Block2 for Q), each a stack of FC + BN blocks (ReLU
    after BN; the figure shows FC and BN only, the activation is this library's choice), the
    two branch outputs concatenated and mapped to one score by FC layers. Inputs of any
    shape [B, ...] are flattened (block outputs [B, H, W, C], images, vectors).

    Fig. 4 shows a single FC after the concatenation. That makes the critic additive,
    T(p, q) = a(p) + b(q), which cannot represent the optimal critic log p(p, q) / p(p)p(q)
    and barely separates joint from shuffled pairs (on identical inputs it reads ~0 where a
    critic with an interaction layer reads close to the maximum). ``head_features`` adds
    hidden FC + ReLU layers between the concatenation and the score; the default has one.
    ``head_features=()`` is the figure's literal single FC.

    ``__call__(p, q, permutation)`` returns (joint scores T(p_i, q_i) [B], marginal scores
    T(p_i, q_perm[i]) [B]). Q is shuffled after its branch rather than before: BatchNorm's
    batch statistics do not depend on the order, so this equals Fig. 4's "shuffle Q, then
    Block2" and runs the branch once.
    """

    p_features: Sequence[int] = (256,)
    q_features: Sequence[int] = (256,)
    head_features: Sequence[int] = (256,)
    bn_momentum: float = 0.9
    param_dtype: Any = jnp.float32

    def _branch(self, x: Array, widths: Sequence[int], name: str, train: bool) -> Array:
        x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
        for i, width in enumerate(widths):
            x = nn.Dense(width, param_dtype=self.param_dtype, name=f"{name}_fc{i}")(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                param_dtype=self.param_dtype,
                name=f"{name}_bn{i}",
            )(x)
            x = nn.relu(x)
        return x

    @nn.compact
    def __call__(
        self, p: Array, q: Array, permutation: Array, *, train: bool = True
    ) -> tuple[Array, Array]:
        if p.shape[0] != q.shape[0]:
            raise ValueError(
                f"JensenShannonCritic: p and q need the same batch size, got {p.shape[0]} and "
                f"{q.shape[0]}"
            )
        chex.assert_shape(permutation, (p.shape[0],))
        p_out = self._branch(p, self.p_features, "p", train)
        q_out = self._branch(q, self.q_features, "q", train)
        pairs = jnp.concatenate(
            [
                jnp.concatenate([p_out, q_out], axis=-1),
                jnp.concatenate([p_out, q_out[permutation]], axis=-1),
            ]
        )
        for i, width in enumerate(self.head_features):
            hidden = nn.Dense(width, param_dtype=self.param_dtype, name=f"head_fc{i}")
            pairs = nn.relu(hidden(pairs))
        scores = nn.Dense(1, param_dtype=self.param_dtype, name="head")(pairs)[:, 0]
        batch = p.shape[0]
        return scores[:batch], scores[batch:]


def information_bottleneck_loss(
    mi_input_intermediate: Array, mi_intermediate_final: Array, *, beta: float = 1.0
) -> Array:
    """L_ib = I(X; Y1) - beta * I(Y1; Y4) (SSN Eq. 5 / 12, beta = 1): minimise it over the
    *network* parameters. Enter it into the total loss as L_id + lambda_ib * L_ib (Eq. 14,
    lambda_ib = 0.001).

    The critics are not trained by this loss: Eq. 9-12 take each estimate's supremum over
    its critic, so a single gradient descent on L_ib would make the critic of I(X; Y1)
    *lower* its own estimate. Train the critic parameters on ``mi_critic_loss`` instead
    (jointly, in the same step: network gradients from L_ib, critic gradients from the
    critic loss).
    """
    return mi_input_intermediate - beta * mi_intermediate_final


def mi_critic_loss(*mi_estimates: Array) -> Array:
    """-(sum of the MI estimates): descending it drives every critic to its supremum
    (SSN Eq. 9 / 11). Each estimate depends only on its own critic's parameters, so one sum
    serves all critics."""
    if not mi_estimates:
        raise ValueError("mi_critic_loss needs at least one MI estimate")
    return -sum(mi_estimates[1:], mi_estimates[0])

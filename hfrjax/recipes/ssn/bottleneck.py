"""SSN's information bottleneck as a training term: two Jensen-Shannon critics and L_ib.

SSN §III-B-1 (Eq. 5, 12): L_ib = I(X; Ŷ_1) - β I(Ŷ_1; Ŷ_4), each mutual information the
supremum of the Jensen-Shannon bound (Eq. 9, 11) over its critic T (Fig. 4). One training
step does both sides of that min-max (`hfrjax.losses.mutual_information`):

* the *network* (and, in a search step, the masks) descends L_ib through Ŷ_1 and Ŷ_4 with the
  critics' parameters held fixed (``stop_gradient``);
* the *critics* ascend their estimates (descend ``mi_critic_loss``) on stopped features.

Both passes see the same values, so the logged estimates are those of either pass.

Modality separation (SSN §III-A: each modality has its own PSBs, and Eq. 5 is stated per
modality m). Marginal pairs are drawn within a modality (`marginal_permutation` with groups),
and `ModalityCritic` normalises each modality with its own batch statistics, so a NIR image's
loss terms depend on NIR images only: one modality's images never reach the other modality's
masks, not even through the critics' BatchNorm statistics.

Critic inputs (this library's choice, the paper gives no sizes): the image X and the block
outputs are average-pooled to at most ``pool`` x ``pool`` positions before the critics'
first FC layer. At 128x128, Ŷ_1 is 64x64x96 = 393k values: a literal FC to 256 units would be
a 100M-parameter critic. ``pool = 0`` flattens the full tensors (Fig. 4 literally).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hfrjax.losses.mutual_information import (
    JensenShannonCritic,
    information_bottleneck_loss,
    jensen_shannon_mi,
    marginal_permutation,
    mi_critic_loss,
)

CRITICS = ("x_y1", "y1_y4")  # T for I(X; Ŷ_1) and T for I(Ŷ_1; Ŷ_4).


def pool_features(x: jax.Array, size: int) -> jax.Array:
    """[B, H, W, C] -> at most [B, size, size, C] by average pooling (exact blocks when H and
    W are multiples of ``size``, else antialiased linear resizing); ``size`` 0: unchanged."""
    if size <= 0 or x.ndim != 4:
        return x
    b, h, w, c = x.shape
    th, tw = min(h, size), min(w, size)
    if (th, tw) == (h, w):
        return x
    if h % th == 0 and w % tw == 0:
        return x.reshape(b, th, h // th, tw, w // tw, c).mean(axis=(2, 4))
    return jax.image.resize(x, (b, th, tw, c), "linear", antialias=True)


class ModalityCritic(JensenShannonCritic):
    """SSN Fig. 4's critic (`JensenShannonCritic`) with BatchNorm statistics per modality.

    ``__call__(p, q, permutation, is_nir, train=True)``: as the parent, but each BN layer
    normalises the NIR rows with NIR statistics and the other rows with theirs (flax's masked
    BatchNorm). A modality absent from the batch takes the whole batch's statistics for its
    (unused) rows, which keeps every value finite. The running averages are updated once per
    modality; the critic is only used in training mode, with batch statistics.
    """

    def _grouped_branch(self, x, widths: Sequence[int], name: str, is_nir, train: bool):
        x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
        masks = []
        for m in (is_nir, ~is_nir):
            masks.append(jnp.where(jnp.any(m), m, jnp.ones_like(m))[:, None])
        for i, width in enumerate(widths):
            x = nn.Dense(width, param_dtype=self.param_dtype, name=f"{name}_fc{i}")(x)
            bn = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                param_dtype=self.param_dtype,
                name=f"{name}_bn{i}",
            )
            x = jnp.where(is_nir[:, None], bn(x, mask=masks[0]), bn(x, mask=masks[1]))
            x = nn.relu(x)
        return x

    @nn.compact
    def __call__(self, p, q, permutation, is_nir, *, train: bool = True):
        if p.shape[0] != q.shape[0] or is_nir.shape != (p.shape[0],):
            raise ValueError(
                f"ModalityCritic: p {p.shape}, q {q.shape} and is_nir {is_nir.shape} need the "
                "same batch size"
            )
        p_out = self._grouped_branch(p, self.p_features, "p", is_nir, train)
        q_out = self._grouped_branch(q, self.q_features, "q", is_nir, train)
        pairs = jnp.concatenate(
            [
                jnp.concatenate([p_out, q_out], axis=-1),
                jnp.concatenate([p_out, q_out[permutation]], axis=-1),
            ]
        )
        for i, width in enumerate(self.head_features):
            pairs = nn.relu(
                nn.Dense(width, param_dtype=self.param_dtype, name=f"head_fc{i}")(pairs)
            )
        scores = nn.Dense(1, param_dtype=self.param_dtype, name="head")(pairs)[:, 0]
        return scores[: p.shape[0]], scores[p.shape[0] :]


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """The two critics of L_ib and how their inputs are prepared."""

    critic: ModalityCritic
    pool: int
    beta: float

    def inputs(self, x, y1, y4):
        """The critics' (P, Q) pairs: (X, Ŷ_1) and (Ŷ_1, Ŷ_4), pooled."""
        px, p1, p4 = (pool_features(t.astype(jnp.float32), self.pool) for t in (x, y1, y4))
        return {"x_y1": (px, p1), "y1_y4": (p1, p4)}

    def init(self, rng, x, y1, y4) -> tuple[dict, dict]:
        """(params, batch_stats) of both critics for inputs shaped like ``x, y1, y4`` (jit it)."""
        batch = x.shape[0]
        perm = jnp.roll(jnp.arange(batch), 1)
        is_nir = jnp.arange(batch) % 2 == 1
        params, stats = {}, {}
        for (name, (p, q)), r in zip(self.inputs(x, y1, y4).items(), jax.random.split(rng)):
            v = self.critic.init(r, p, q, perm, is_nir, train=False)
            params[name], stats[name] = v["params"], v["batch_stats"]
        return params, stats

    def terms(
        self,
        critic_params: dict,
        batch_stats: dict,
        x,
        y1,
        y4,
        is_nir,
        rng,
        *,
        train_critics: bool,
    ) -> tuple[jax.Array, jax.Array, dict, dict]:
        """(L_ib, critic loss, new batch_stats, metrics) for one batch.

        L_ib carries gradients to the features only; the critic loss (0 unless
        ``train_critics``) to the critics only; see the module docstring.
        """
        sg = jax.lax.stop_gradient
        perm = marginal_permutation(rng, x.shape[0], is_nir.astype(jnp.int32))
        pairs = self.inputs(x, y1, y4)
        mi, critic_mi, new_stats = {}, [], dict(batch_stats)
        for name, (p, q) in pairs.items():
            variables = {"params": sg(critic_params[name]), "batch_stats": batch_stats[name]}
            (joint, marginal), _ = self.critic.apply(
                variables, p, q, perm, is_nir, train=True, mutable=["batch_stats"]
            )
            mi[name] = jensen_shannon_mi(joint, marginal)
            if train_critics:
                variables = {"params": critic_params[name], "batch_stats": batch_stats[name]}
                (joint, marginal), upd = self.critic.apply(
                    variables, sg(p), sg(q), perm, is_nir, train=True, mutable=["batch_stats"]
                )
                critic_mi.append(jensen_shannon_mi(joint, marginal))
                new_stats[name] = upd["batch_stats"]
        l_ib = information_bottleneck_loss(mi["x_y1"], mi["y1_y4"], beta=self.beta)
        critic_loss = mi_critic_loss(*critic_mi) if critic_mi else jnp.zeros((), jnp.float32)
        metrics = {"ib/mi_x_y1": mi["x_y1"], "ib/mi_y1_y4": mi["y1_y4"], "loss/ib": l_ib}
        if train_critics:
            metrics["loss/critic"] = critic_loss
        return l_ib, critic_loss, new_stats, metrics


def make_bottleneck(
    features: Sequence[int],
    head: Sequence[int],
    pool: int,
    beta: float,
    param_dtype: Any = jnp.float32,
) -> Bottleneck:
    critic = ModalityCritic(
        p_features=tuple(features),
        q_features=tuple(features),
        head_features=tuple(head),
        param_dtype=param_dtype,
    )
    return Bottleneck(critic=critic, pool=int(pool), beta=float(beta))

"""Gradient reversal layer (GRL): identity forward, -lambda * gradient backward.

Ganin & Lempitsky, "Unsupervised domain adaptation by backpropagation" (ICML 2015), as used
by TOPLight (§3.2, Eq. 1-2) on the final features before the domain classifier: the
classifier still learns to tell the (fake) domains apart, while the layers below the GRL
receive the reversed gradient and so learn to confuse it.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def _reverse(x: chex.ArrayTree, lam: Array) -> chex.ArrayTree:
    return x


def _reverse_fwd(x: chex.ArrayTree, lam: Array) -> tuple[chex.ArrayTree, Array]:
    return x, lam


def _reverse_bwd(lam: Array, g: chex.ArrayTree) -> tuple[chex.ArrayTree, Array]:
    flipped = jax.tree.map(lambda t: (-lam).astype(t.dtype) * t, g)
    # lambda is a hyper-parameter (often a schedule): it gets no gradient.
    return flipped, jnp.zeros_like(lam)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def grad_reverse(x: chex.ArrayTree, lam: Any = 1.0) -> chex.ArrayTree:
    """Identity on ``x`` (an array or pytree of arrays); multiplies its cotangent by -lam.

    ``lam`` may be a Python float or a traced scalar (e.g. Ganin's ramp
    2 / (1 + exp(-10 p)) - 1 computed from the step inside ``jit``), so a schedule does not
    recompile. ``lam`` itself receives a zero gradient.
    """
    lam = jnp.asarray(lam, jnp.float32)
    if lam.ndim != 0:
        raise ValueError(f"grad_reverse: lam must be a scalar, got shape {lam.shape}")
    return _reverse(x, lam)

"""Cross-spectral voting that links RGB clusters to IR clusters (CSAN §III-D, Alg. 1 l. 20-31).

Every epoch, for each (filtered) RGB cluster n: each member finds its nearest IR sample among
the IR samples that survived filtering (``argmin`` of ``cdist(F_RGB^n, F_IR)``), and votes for
that sample's IR cluster.  If the winning IR cluster holds at least 50 % of the cluster's votes
(Alg. 1 line 26: ``count ≥ 50 %``) the two clusters are linked (line 27); otherwise the RGB
cluster sits out this epoch (line 29).

What 50 % means at a tie.  The inequality is inclusive, so a cluster of 2m members whose votes
split m / m between two IR clusters still links.  Alg. 1 takes the winner from a vote counter,
which then returns whichever tied cluster it met first — an order that depends on how samples
are stored.  Here the tie is broken by the smaller summed distance of the tied clusters' votes
(the IR cluster that is nearer overall), then by the smaller IR cluster id, so the outcome does
not depend on sample order.  Anything below half (e.g. 3 of 7, or a three-way 4/4/2 split of
10 where the winner has 40 %) does not link.

Several RGB clusters may vote for the same IR cluster; each keeps its link (the triplet loss
draws positives per RGB anchor).  `linked_labels` applies line 27 literally, where the last
RGB cluster in order overwrites the IR cluster's label.
"""

from __future__ import annotations

import flax
import numpy as np

from hfrjax.recipes.csan import distances
from hfrjax.recipes.csan.clustering import _as_labels
from hfrjax.recipes.csan.distances import DEFAULT_BLOCK_ENTRIES, as_features

MAJORITY = 0.5  # Alg. 1 line 26


@flax.struct.dataclass
class VoteResult:
    """Per RGB cluster id 0..K_rgb-1 (arrays only, for a checkpointed pytree).

    link: the linked IR cluster id, or -1 (no majority, or the cluster was filtered out).
    winner: the IR cluster with the most votes (-1 for a cluster without members).
    votes: the winner's vote count.  voters: the cluster's number of (kept) members.
    nearest_ir: [n_rgb] index of each RGB sample's nearest kept IR sample (-1 if not voting).
    """

    link: np.ndarray
    winner: np.ndarray
    votes: np.ndarray
    voters: np.ndarray
    nearest_ir: np.ndarray


def nearest_samples(
    queries: np.ndarray,
    references: np.ndarray,
    *,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
) -> tuple[np.ndarray, np.ndarray]:
    """(index, Euclidean distance) of each query's nearest reference, blockwise; a float32
    GEMM whose near-ties are re-scored in float64, so the answer is float64's
    (`hfrjax.recipes.csan.distances.nearest`)."""
    idx, sq = distances.nearest(queries, references, block_entries=block_entries)
    return idx, np.sqrt(sq)


def cross_spectral_vote(
    rgb_features: np.ndarray,
    rgb_labels: np.ndarray,
    ir_features: np.ndarray,
    ir_labels: np.ndarray,
    *,
    majority: float = MAJORITY,
    block_entries: int = DEFAULT_BLOCK_ENTRIES,
) -> VoteResult:
    """Alg. 1 lines 23-31 for every RGB cluster at once.

    Labels are cluster ids with -1 for samples removed by filtering: removed RGB samples do
    not vote and removed IR samples cannot be voted for.  A cluster links when
    ``votes ≥ majority · voters`` (ties: see the module docstring).
    """
    xr = as_features(rgb_features, None)
    xi = as_features(ir_features, None)
    yr = _as_labels(rgb_labels, xr.shape[0], "rgb_labels")
    yi = _as_labels(ir_labels, xi.shape[0], "ir_labels")
    if not 0.0 < majority <= 1.0:
        raise ValueError(f"majority must be in (0, 1], got {majority}")
    num_rgb = int(yr.max()) + 1 if (yr >= 0).any() else 0
    link = np.full(num_rgb, -1, np.int64)
    winner = np.full(num_rgb, -1, np.int64)
    votes = np.zeros(num_rgb, np.int64)
    voters = np.bincount(yr[yr >= 0], minlength=num_rgb).astype(np.int64)
    nearest_ir = np.full(len(yr), -1, np.int64)
    voting = np.flatnonzero(yr >= 0)
    candidates = np.flatnonzero(yi >= 0)
    if len(voting) == 0 or len(candidates) == 0:
        return VoteResult(link, winner, votes, voters, nearest_ir)
    queries = xr if len(voting) == len(yr) else xr[voting]
    references = xi if len(candidates) == len(yi) else xi[candidates]
    j, dist = nearest_samples(queries, references, block_entries=block_entries)
    nearest_ir[voting] = candidates[j]
    rgb_c = yr[voting]
    ir_c = yi[candidates[j]]
    # Tally (rgb cluster, ir cluster) pairs: count and summed distance.
    pairs, inverse = np.unique(np.stack([rgb_c, ir_c], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    count = np.bincount(inverse)
    dsum = np.bincount(inverse, weights=dist)
    # Per RGB cluster: most votes, then smaller summed distance, then smaller IR id.
    order = np.lexsort((pairs[:, 1], dsum, -count, pairs[:, 0]))
    first = np.ones(len(order), bool)
    first[1:] = pairs[order[1:], 0] != pairs[order[:-1], 0]
    best = order[first]
    c = pairs[best, 0]
    winner[c] = pairs[best, 1]
    votes[c] = count[best]
    linked = votes * 1.0 >= majority * voters
    linked &= voters > 0
    link[linked] = winner[linked]
    return VoteResult(link, winner, votes, voters, nearest_ir)


def linked_labels(
    rgb_labels: np.ndarray, ir_labels: np.ndarray, link: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shared pseudo-labels for this epoch (Alg. 1 lines 27 and 29).

    RGB samples of a linked cluster keep its id, other RGB samples get -1; IR samples of an IR
    cluster that some RGB cluster linked to take that RGB cluster's id (the last in order when
    several link to it, as line 27 overwrites), other IR samples get -1.
    """
    yr = np.asarray(rgb_labels).astype(np.int64)
    yi = np.asarray(ir_labels).astype(np.int64)
    link = np.asarray(link).astype(np.int64)
    rgb_out = np.where((yr >= 0) & (link[np.maximum(yr, 0)] >= 0), yr, -1)
    num_ir = int(yi.max()) + 1 if (yi >= 0).any() else 0
    ir_to_rgb = np.full(max(num_ir, int(link.max(initial=-1)) + 1), -1, np.int64)
    linked = np.flatnonzero(link >= 0)
    np.maximum.at(ir_to_rgb, link[linked], linked)  # the last RGB cluster in order wins
    ir_out = np.where(yi >= 0, ir_to_rgb[np.maximum(yi, 0)], -1)
    return rgb_out, ir_out

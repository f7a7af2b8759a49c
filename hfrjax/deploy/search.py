"""Top-k identity search of probes against a gallery, blockwise so galleries of any size fit.

An identity's score for a probe is the best cosine similarity over its gallery images
(max fusion, what 1:N search engines report). The gallery is grouped by identity and cut into
blocks of whole identities of about ``block_size`` images; each (probe block x gallery block)
similarity matrix is reduced at once to per-identity maxima (``np.maximum.reduceat``) and
merged into a running top-k, so memory is O(probe_block x (block_size + k)) whatever the
gallery size. Ties are broken by identity name, so results are deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SearchResult:
    identities: list[str]  # All gallery identities; ``top_identity`` indexes this list.
    top_identity: np.ndarray  # int64 [P, k]
    top_score: np.ndarray  # float32 [P, k]
    top_gallery: np.ndarray  # int64 [P, k]: the gallery row of the best image of each hit.

    def rows(self, probe_keys: list[str], gallery_keys: list[str]) -> list[dict]:
        out = []
        for p, key in enumerate(probe_keys):
            for r in range(self.top_identity.shape[1]):
                out.append(
                    {
                        "probe": key,
                        "rank": r + 1,
                        "identity": self.identities[int(self.top_identity[p, r])],
                        "score": float(self.top_score[p, r]),
                        "gallery_key": gallery_keys[int(self.top_gallery[p, r])],
                    }
                )
        return out


def _identity_blocks(starts: np.ndarray, total: int, block_size: int) -> list[tuple[int, int]]:
    """(first identity, end identity) ranges holding about ``block_size`` images each."""
    bounds = np.append(starts, total)
    blocks, first = [], 0
    n_ids = len(starts)
    while first < n_ids:
        # Last identity whose end stays within first's start + block_size (at least one).
        end = int(np.searchsorted(bounds, bounds[first] + block_size, side="right")) - 1
        end = max(end, first + 1)
        end = min(end, n_ids)
        blocks.append((first, end))
        first = end
    return blocks


def top_k_identities(
    probes: np.ndarray,
    gallery: np.ndarray,
    gallery_identities: list[str],
    *,
    k: int = 5,
    block_size: int = 65536,
    probe_block: int = 256,
) -> SearchResult:
    """Top-``k`` gallery identities per probe by max cosine similarity (unit-norm inputs)."""
    probes = np.asarray(probes, np.float32)
    gallery = np.asarray(gallery, np.float32)
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"probe embeddings {probes.shape} and gallery embeddings {gallery.shape} must be "
            "[P, D] and [G, D] with the same D"
        )
    if len(gallery_identities) != len(gallery):
        raise ValueError(
            f"{len(gallery)} gallery embeddings but {len(gallery_identities)} identities"
        )
    if len(gallery) == 0 or len(probes) == 0:
        raise ValueError(f"nothing to search: {len(probes)} probes, {len(gallery)} gallery images")
    if any(i is None for i in gallery_identities):
        raise ValueError("every gallery image needs an identity")
    if k < 1 or block_size < 1 or probe_block < 1:
        raise ValueError(
            f"k, block_size and probe_block must be >= 1, got {k}, {block_size}, {probe_block}"
        )
    names, gid = np.unique(np.asarray([str(i) for i in gallery_identities]), return_inverse=True)
    order = np.argsort(gid, kind="stable")
    g_sorted, gid_sorted = gallery[order], gid[order]
    starts = np.nonzero(np.r_[True, gid_sorted[1:] != gid_sorted[:-1]])[0]
    k = min(k, len(names))
    blocks = _identity_blocks(starts, len(gid_sorted), block_size)
    bounds = np.append(starts, len(gid_sorted))

    p_total = len(probes)
    top_id = np.zeros((p_total, k), np.int64)
    top_sc = np.zeros((p_total, k), np.float32)
    for ps in range(0, p_total, probe_block):
        pb = probes[ps : ps + probe_block]
        run_id = np.zeros((len(pb), 0), np.int64)
        run_sc = np.zeros((len(pb), 0), np.float32)
        for first, end in blocks:
            lo, hi = bounds[first], bounds[end]
            sim = pb @ g_sorted[lo:hi].T
            seg_max = np.maximum.reduceat(sim, starts[first:end] - lo, axis=1)
            ids = np.broadcast_to(np.arange(first, end), seg_max.shape)
            run_id = np.concatenate([run_id, ids], axis=1)
            run_sc = np.concatenate([run_sc, seg_max], axis=1)
            if run_sc.shape[1] > k:
                # Sort by (-score, identity index): identity indices follow sorted names.
                sel = np.lexsort((run_id, -run_sc), axis=1)[:, :k]
                run_id = np.take_along_axis(run_id, sel, axis=1)
                run_sc = np.take_along_axis(run_sc, sel, axis=1)
        sel = np.lexsort((run_id, -run_sc), axis=1)
        top_id[ps : ps + len(pb)] = np.take_along_axis(run_id, sel, axis=1)[:, :k]
        top_sc[ps : ps + len(pb)] = np.take_along_axis(run_sc, sel, axis=1)[:, :k]
    top_gallery = np.zeros_like(top_id)
    for p in range(p_total):
        for r in range(k):
            i = top_id[p, r]
            lo, hi = bounds[i], bounds[i + 1]
            top_gallery[p, r] = order[lo + int(np.argmax(g_sorted[lo:hi] @ probes[p]))]
    return SearchResult([str(n) for n in names], top_id, top_sc, top_gallery)

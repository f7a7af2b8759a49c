"""Re-identification metrics under the SYSU-MM01 / RegDB rules, against a brute-force
reference written here from the standard evaluation code's per-query procedure."""

import numpy as np
import pytest

from hfrjax.eval import reid

MAX_RANK = 20


def _reference(sim, ql, gl, qc, gc, *, same_room, scope, cmc_kind):
    """Per query: rank the gallery by decreasing score, drop the ignored images, then CMC over
    images or over distinct identities (first appearance), AP and INP over images."""
    rows = []
    for i in range(sim.shape[0]):
        order = np.argsort(-sim[i], kind="stable")  # The tests' scores have no ties.
        drop = np.zeros(order.size, bool)
        for q_cam, g_cam in same_room:
            drop |= (qc[i] == q_cam) & (gc[order] == g_cam)
        if scope == "identity":
            drop &= gl[order] == ql[i]
        labels = gl[order][~drop]
        hits = labels == ql[i]
        if not hits.any():
            continue
        if cmc_kind == "identity":
            seen, uniq = set(), []
            for lab in labels:
                if lab not in seen:
                    seen.add(lab)
                    uniq.append(lab)
            match = np.asarray(uniq) == ql[i]
        else:
            match = hits
        curve = np.minimum(np.cumsum(match), 1).astype(float)
        curve = np.concatenate([curve, np.full(max(0, MAX_RANK - curve.size), curve[-1])])
        pos = np.flatnonzero(hits)
        ap = np.mean([(j + 1) / (p + 1) for j, p in enumerate(pos)])
        inp = pos.size / (pos[-1] + 1)
        rows.append((curve[:MAX_RANK], ap, inp))
    cmc = np.mean([r[0] for r in rows], axis=0)
    return (
        cmc,
        float(np.mean([r[1] for r in rows])),
        float(np.mean([r[2] for r in rows])),
        len(rows),
    )


def _random_case(seed, num_q=40, num_g=30, num_ids=8):
    rng = np.random.default_rng(seed)
    ql = rng.integers(0, num_ids, num_q)
    gl = rng.integers(0, num_ids, num_g)
    qc = rng.choice([3, 6], num_q)
    gc = rng.choice([1, 2, 4, 5], num_g)
    sim = rng.normal(size=(num_q, num_g))
    sim += 0.8 * (ql[:, None] == gl[None, :])  # Matches tend to score higher.
    return sim, ql, gl, qc, gc


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "rules",
    [
        reid.SYSU_RULES,
        reid.ReidRules(
            "sysu-identity-scope", "identity", ((3, 2),), "identity", reid.SYSU_RULES.camera_of
        ),
        reid.REGDB_RULES,
    ],
    ids=["sysu", "sysu-identity-scope", "regdb"],
)
def test_metrics_match_brute_force_reference(seed, rules):
    sim, ql, gl, qc, gc = _random_case(seed)
    scores = reid.reid_scores(sim, ql, gl, qc, gc, rules=rules)
    cmc, mean_ap, mean_inp, valid = _reference(
        sim,
        ql,
        gl,
        qc,
        gc,
        same_room=rules.same_room,
        scope=rules.same_room_scope,
        cmc_kind=rules.cmc,
    )
    assert scores.num_valid == valid
    np.testing.assert_allclose(scores.cmc(MAX_RANK), cmc, rtol=0, atol=1e-12)
    got_ap, got_inp = scores.map_minp()
    assert got_ap == pytest.approx(mean_ap, abs=1e-12)
    assert got_inp == pytest.approx(mean_inp, abs=1e-12)
    m = reid.reid_metrics(sim, ql, gl, qc, gc, rules=rules)
    assert m == pytest.approx(
        {"Rank-1": cmc[0], "Rank-10": cmc[9], "Rank-20": cmc[19], "mAP": mean_ap, "mINP": mean_inp}
    )


def test_same_room_rule_by_hand():
    # Query 0 (identity 7, cam3) and query 1 (identity 7, cam6); gallery:
    # g0 id7 cam2 (best), g1 id9 cam2, g2 id8 cam1, g3 id7 cam1, g4 id8 cam4.
    sim = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, 0.7, 0.6, 0.5]])
    ql, gl = np.array([7, 7]), np.array([7, 9, 8, 7, 8])
    qc, gc = np.array([3, 6]), np.array([2, 2, 1, 1, 4])
    standard = reid.reid_scores(sim, ql, gl, qc, gc, rules=reid.SYSU_RULES)
    # cam3 query: g0, g1 ignored -> ranking g2 (id8), g3 (id7): identity rank 2; cam6: rank 1.
    assert standard.first_rank.tolist() == [2, 1]
    assert standard.num_ignored.tolist() == [2, 0]
    assert standard.average_precision[0] == pytest.approx(1 / 2)
    assert standard.average_precision[1] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert standard.inp.tolist() == pytest.approx([1 / 2, 2 / 4])
    scoped = reid.reid_scores(
        sim, ql, gl, qc, gc, rules=reid.ReidRules("x", "identity", ((3, 2),), "identity", str)
    )
    # Only its own identity's cam2 image is ignored: g1 (id9) and g2 (id8) rank ahead.
    assert scoped.first_rank.tolist() == [3, 1]
    assert scoped.num_ignored.tolist() == [1, 0]


def test_identity_cmc_counts_identities_not_images():
    # Two images of impostor 5 and one of impostor 6 above the genuine image.
    sim = np.array([[0.9, 0.8, 0.7, 0.6]])
    ql, gl = np.array([1]), np.array([5, 5, 6, 1])
    cams = np.array([1, 1, 1, 1])
    by_image = reid.reid_scores(sim, ql, gl, np.array([6]), cams, rules=reid.REGDB_RULES)
    by_identity = reid.reid_scores(sim, ql, gl, np.array([6]), cams, rules=reid.SYSU_RULES)
    assert by_image.first_rank.tolist() == [4]
    assert by_identity.first_rank.tolist() == [3]


def test_ties_are_pessimistic_and_unmatched_queries_left_out():
    sim = np.zeros((2, 4))  # Constant scores: every impostor identity ties with the match.
    ql, gl = np.array([1, 2]), np.array([1, 3, 3, 4])
    qc, gc = np.array([6, 3]), np.array([1, 1, 1, 1])
    s = reid.reid_scores(sim, ql, gl, qc, gc, rules=reid.SYSU_RULES)
    assert s.first_rank.tolist() == [3, 0]  # Identities 3 and 4 ahead; query 1 has no match.
    assert s.num_valid == 1
    assert s.average_precision[0] == pytest.approx(1 / 4)  # The match sorted last.
    assert np.isnan(s.average_precision[1])
    # A cam3 query whose only match is in cam2 has no kept match either.
    s = reid.reid_scores(
        np.array([[0.5, 0.1]]),
        np.array([1]),
        np.array([1, 2]),
        np.array([3]),
        np.array([2, 1]),
        rules=reid.SYSU_RULES,
    )
    assert s.num_valid == 0
    with pytest.raises(ValueError, match="no query has a"):
        reid.reid_metrics(
            np.array([[0.5, 0.1]]),
            np.array([1]),
            np.array([1, 2]),
            np.array([3]),
            np.array([2, 1]),
            rules=reid.SYSU_RULES,
        )


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        reid.reid_scores(np.zeros((2, 3)), [1, 2], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        reid.reid_scores(np.array([[np.nan]]), [1], [1])
    with pytest.raises(ValueError, match="cameras"):
        reid.reid_scores(np.zeros((1, 1)), [1], [1], rules=reid.SYSU_RULES)
    with pytest.raises(ValueError, match="camera_of"):
        reid.ReidRules("x", same_room=((3, 2),))
    with pytest.raises(ValueError, match="cmc"):
        reid.ReidRules("x", cmc="images")
    assert reid.rules_for("sysu-mm01") is reid.SYSU_RULES
    assert reid.rules_for("regdb") is reid.REGDB_RULES
    assert reid.rules_for("casia") is reid.STANDARD_RULES

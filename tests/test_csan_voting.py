"""CSAN cross-spectral voting (Alg. 1 lines 20-31) and pseudo-label diagnostics."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from hfrjax.recipes.csan import diagnostics, filtering, voting

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def ir_bank():
    """Three IR clusters on a line: cluster 0 near x=0, 1 near x=10, 2 near x=20."""
    x = np.array([[0.0], [0.5], [10.0], [10.5], [20.0], [20.5]])
    return x, np.array([0, 0, 1, 1, 2, 2])


def vote_one(rgb_x):
    ir_x, ir_y = ir_bank()
    return voting.cross_spectral_vote(rgb_x, np.zeros(len(rgb_x), int), ir_x, ir_y)


def test_clear_majority_links():
    out = vote_one(np.array([[0.1], [0.2], [0.4], [10.2]]))  # 3 of 4 vote IR cluster 0
    assert out.link[0] == 0 and out.winner[0] == 0 and out.votes[0] == 3 and out.voters[0] == 4


def test_exact_half_links_and_tie_goes_to_the_nearer_cluster():
    # 2 votes for cluster 0 (distances 0.4 + 0.3), 2 for cluster 1 (distances 0.1 + 0.1).
    out = vote_one(np.array([[0.9], [0.8], [10.1], [10.4]]))
    assert out.votes[0] == 2 and out.voters[0] == 4
    assert out.link[0] == 1  # 50 % counts (Alg. 1: "count >= 50 %"); the nearer cluster wins
    # Same split, sample order reversed: the outcome does not depend on order.
    out = vote_one(np.array([[10.4], [10.1], [0.8], [0.9]]))
    assert out.link[0] == 1
    # Equal summed distance too: the smaller IR cluster id wins.
    out = vote_one(np.array([[0.25], [0.25], [10.25], [10.25]]))
    assert out.link[0] == 0


def test_no_majority_sits_out():
    # 2 / 2 / 1 of 5 votes: the winner holds 40 %.
    out = vote_one(np.array([[0.0], [0.5], [10.0], [10.5], [20.0]]))
    assert out.votes[0] == 2 and out.link[0] == -1 and out.winner[0] >= 0
    # 3 of 7 is below half even though it is the plurality.
    out = vote_one(np.array([[0.0]] * 3 + [[10.0]] * 2 + [[20.0]] * 2))
    assert out.votes[0] == 3 and out.link[0] == -1


def test_vote_against_brute_force_and_filtered_samples():
    rng = np.random.default_rng(0)
    rgb = rng.normal(size=(60, 5))
    ir = rng.normal(size=(50, 5))
    ry = rng.integers(-1, 8, size=60)
    iy = rng.integers(-1, 6, size=50)
    out = voting.cross_spectral_vote(rgb, ry, ir, iy, block_entries=120)
    d = cdist(rgb, ir)
    d[:, iy < 0] = np.inf  # removed IR samples cannot be voted for
    for c in range(ry.max() + 1):
        members = np.flatnonzero(ry == c)
        votes = iy[np.argmin(d[members], axis=1)]
        assert out.voters[c] == len(members)
        if len(members) == 0:
            assert out.link[c] == -1
            continue
        counts = np.bincount(votes)
        assert out.votes[c] == counts.max()
        assert counts[out.winner[c]] == counts.max()
        assert (out.link[c] >= 0) == (2 * counts.max() >= len(members))
        np.testing.assert_array_equal(out.nearest_ir[members], np.argmin(d[members], axis=1))
    assert (out.nearest_ir[ry < 0] == -1).all()


def test_linked_labels_follow_line_27():
    rgb_y = np.array([0, 0, 1, 1, 2, -1])
    ir_y = np.array([0, 0, 1, 2, -1])
    link = np.array([1, -1, 1])  # clusters 0 and 2 both link IR cluster 1; cluster 1 sits out
    r, i = voting.linked_labels(rgb_y, ir_y, link)
    np.testing.assert_array_equal(r, [0, 0, -1, -1, 2, -1])
    np.testing.assert_array_equal(i, [-1, -1, 2, -1, -1])  # the last RGB cluster overwrites


def test_contingency_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(5):
        truth = rng.integers(0, 6, size=80)
        pred = np.where(rng.random(80) < 0.7, truth, rng.integers(0, 9, size=80))
        assert diagnostics.normalized_mutual_info(pred, truth) == pytest.approx(
            sklearn_metrics.normalized_mutual_info_score(truth, pred), abs=1e-12
        )
        assert diagnostics.adjusted_rand_index(pred, truth) == pytest.approx(
            sklearn_metrics.adjusted_rand_score(truth, pred), abs=1e-12
        )
    for pred, truth in (([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [0, 1, 2]), ([0, 0, 1], [0, 0, 0])):
        assert diagnostics.normalized_mutual_info(pred, truth) == pytest.approx(
            sklearn_metrics.normalized_mutual_info_score(truth, pred)
        )
        assert diagnostics.adjusted_rand_index(pred, truth) == pytest.approx(
            sklearn_metrics.adjusted_rand_score(truth, pred)
        )


def test_purity_and_link_accuracy_by_hand():
    labels = np.array([0, 0, 0, 1, 1, -1])
    truth = np.array([5, 5, 7, 7, 7, 9])
    assert diagnostics.cluster_purity(labels, truth) == pytest.approx(4 / 5)
    assert diagnostics.num_clusters(labels) == 2
    ir_labels = np.array([0, 0, 1, 1])
    ir_truth = np.array([7, 7, 5, 5])
    # RGB 0 (mostly 5) -> IR 1 (5): right; RGB 1 (7) -> IR 1 (5): wrong.
    acc = diagnostics.link_accuracy(labels, truth, ir_labels, ir_truth, np.array([1, 1]))
    assert acc == pytest.approx(0.5)
    none = diagnostics.link_accuracy(labels, truth, ir_labels, ir_truth, np.array([-1, -1]))
    assert math.isnan(none)


def test_epoch_diagnostics_and_plot(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(6), 5)
    rgb = np.repeat(rng.normal(size=(6, 4)) * 5, 5, 0) + 0.1 * rng.normal(size=(30, 4))
    ir = rgb + 0.2 * rng.normal(size=(30, 4))
    rgb_f = filtering.filter_clusters(rgb, ids)
    ir_f = filtering.filter_clusters(ir, ids)
    vote = voting.cross_spectral_vote(rgb, rgb_f.labels, ir, ir_f.labels)
    record = diagnostics.epoch_diagnostics(
        rgb_labels=ids, ir_labels=ids, rgb_filter=rgb_f, ir_filter=ir_f, vote=vote,
        rgb_truth=ids, ir_truth=ids,
    )
    assert record["rgb_clusters"] == record["ir_clusters"] == 6
    assert record["rgb_kept"] == record["ir_kept"] == record["rgb_linked"] == 6
    assert record["link_accuracy"] == record["rgb_purity"] == record["ir_nmi"] == 1.0
    blind = diagnostics.epoch_diagnostics(
        rgb_labels=ids, ir_labels=ids, rgb_filter=rgb_f, ir_filter=ir_f, vote=vote
    )
    assert "link_accuracy" not in blind
    history = [dict(record, epoch=e) for e in (1, 2, 3)]
    path = tmp_path / "diag.png"
    fig = diagnostics.plot_diagnostics(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(fig.axes) == 2
    assert len(diagnostics.plot_diagnostics([blind]).axes) == 1
    with pytest.raises(ValueError, match="at least one"):
        diagnostics.plot_diagnostics([])

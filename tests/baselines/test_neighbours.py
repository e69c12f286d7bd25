"""Popularity and item-kNN: known answers on tiny data, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glossrec.baselines.neighbours import ItemKNN, Popularity
from glossrec.config import ItemKNNConfig


def test_popularity_counts_training_occurrences(tmp_path: Path) -> None:
    pop = Popularity(4)
    pop.fit([[0, 1, 1], [1, 2]])
    assert pop.score([[3]]).tolist() == [[1.0, 3.0, 1.0, 0.0]]
    pop.save(tmp_path)
    assert Popularity.load(tmp_path).score([[]]).tolist() == [[1.0, 3.0, 1.0, 0.0]]


def test_itemknn_cosine_by_hand(tmp_path: Path) -> None:
    # users: {0,1}, {0,1,2}, {2,3}: |U0|=2 |U1|=2 |U2|=2 |U3|=1
    knn = ItemKNN(4, ItemKNNConfig(neighbours=10))
    knn.fit([[0, 1], [0, 1, 2], [2, 3, 3]])
    sim = knn.sim.toarray()
    assert np.isclose(sim[0, 1], 2 / np.sqrt(2 * 2))
    assert np.isclose(sim[1, 2], 1 / np.sqrt(2 * 2))
    assert np.isclose(sim[2, 3], 1 / np.sqrt(2 * 1))  # a repeat purchase counts once
    assert sim[0, 0] == 0 and sim[0, 3] == 0
    s = knn.score([[0, 2]])[0]
    assert np.isclose(s[1], sim[0, 1] + sim[2, 1], atol=1e-5)
    knn.save(tmp_path)
    np.testing.assert_allclose(ItemKNN.load(tmp_path).score([[0, 2]]), knn.score([[0, 2]]))


def test_itemknn_keeps_only_the_top_neighbours() -> None:
    knn = ItemKNN(5, ItemKNNConfig(neighbours=1))
    knn.fit([[0, 1], [0, 1], [0, 2], [3, 4]])
    assert (knn.sim.getnnz(axis=1) <= 1).all()
    assert knn.sim[0].toarray().argmax() == 1  # item 1 co-occurs with 0 twice, item 2 once

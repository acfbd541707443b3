"""Generated ratings with planted user-item affinities and Zipf-skewed item popularity.

Every item belongs to one of ``topics`` topics (its genre); every user has a favourite topic.
Each of a user's interactions picks the favourite topic with probability ``affinity`` (else a
uniformly random topic), then an item of that topic with probability proportional to the item's
popularity, ``1 / rank ** zipf`` over a random popularity order. All interactions are positives
(rating 5) at increasing timestamps, so ``preprocess_raw`` splits them by time like real data.
Deterministic in ``seed``; vectorized, so a million items and users take seconds.
"""
from __future__ import annotations

import numpy as np

from torchrec_models.retrieval.movielens import RawRatings


def synthetic_ratings(users: int, items: int, per_user: int, seed: int = 0, topics: int = 20,
                      affinity: float = 0.8, zipf: float = 1.1) -> RawRatings:
    """``users`` x ``per_user`` interactions over ``items`` items (string ids as in real files)."""
    rng = np.random.default_rng(seed)
    topics = min(topics, items)
    item_topic = rng.permutation(np.arange(items) % topics)  # every topic has items
    popularity = 1.0 / (rng.permutation(items) + 1.0) ** zipf
    favourite = rng.integers(0, topics, users)
    user = np.repeat(np.arange(users), per_user)
    topic = np.where(rng.random(len(user)) < affinity, favourite[user], rng.integers(0, topics, len(user)))
    item = _draw_in_topic(rng, topic, item_topic, popularity, topics)
    return RawRatings(
        layout="synthetic",
        users=user.astype(str), items=item.astype(str),
        ratings=np.full(len(user), 5.0), timestamps=np.arange(len(user), dtype=np.int64),
        user_features={str(u): {"age": str(20 + u % 7), "gender": "MF"[u % 2], "occupation": f"job{u % 5}"}
                       for u in range(users)},
        item_genres={str(i): [f"topic{t}"] for i, t in enumerate(item_topic)},
    )


def _draw_in_topic(rng: np.random.Generator, topic: np.ndarray, item_topic: np.ndarray,
                   popularity: np.ndarray, topics: int) -> np.ndarray:
    """For each entry of ``topic``, an item of that topic drawn in proportion to its popularity."""
    order = np.argsort(item_topic, kind="stable")  # items grouped by topic
    starts = np.searchsorted(item_topic[order], np.arange(topics + 1))
    weights = popularity[order]
    cumulative = np.cumsum(weights)
    before = np.concatenate(([0.0], cumulative))[starts]  # mass before each topic's group
    mass = before[1:] - before[:-1]
    target = before[topic] + rng.random(len(topic)) * mass[topic]
    picked = np.searchsorted(cumulative, target, side="right")
    return order[np.minimum(picked, starts[topic + 1] - 1)]

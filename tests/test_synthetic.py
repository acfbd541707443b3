"""The synthetic generator: deterministic, sliceable, skewed, learnable."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY
from torchrec_models.config import load_config
from torchrec_models.data.hashing import extend_hash, fmix32, hash_coords
from torchrec_models.data.synthetic import EVAL_STREAM, SyntheticData, SyntheticSpec


def _data(*overrides: str) -> SyntheticData:
    return SyntheticData(SyntheticSpec.from_config(load_config(TINY, list(overrides))))


def _fmix32_reference(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_hash_matches_plain_python_arithmetic() -> None:
    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0xDEADBEEF, 0xFFFFFFFF]
    got = fmix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [_fmix32_reference(v) for v in values]


def _hash_reference(*coords: int) -> int:
    """hash_coords folded in plain Python integers."""
    h = None
    for c in coords:
        c &= 0xFFFFFFFF
        h = _fmix32_reference(c ^ 0x5BD1E995) if h is None else _fmix32_reference((h * 0x9E3779B1 + c) & 0xFFFFFFFF)
    return h


def test_tensor_hashes_match_plain_python_over_the_whole_int64_range() -> None:
    """The tensor path mixes int32 bit patterns with wrapping products: same bits as exact arithmetic."""
    values = [0, 1, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**40 + 3, 2**62 + 11, -1, -5, -(2**35)]
    x = torch.tensor(values, dtype=torch.int64)
    assert hash_coords(x).tolist() == [_hash_reference(v) for v in values]
    assert hash_coords(3, x, 2**33 + 9).tolist() == [_hash_reference(3, v, 2**33 + 9) for v in values]
    assert extend_hash(hash_coords(5, x), x).tolist() == [_hash_reference(5, v, v) for v in values]
    grid = hash_coords(x[:, None], x[None, :])
    assert grid[3, 9].item() == _hash_reference(values[3], values[9])


def test_slices_compose_into_the_global_batch() -> None:
    data = _data("data.variable_pooling=true")
    whole = data.batch(step=5, start=0, stop=64)
    halves = [data.batch(5, 0, 32), data.batch(5, 32, 64)]
    assert torch.equal(whole.labels, torch.cat([h.labels for h in halves]))
    assert torch.equal(whole.dense_features, torch.cat([h.dense_features for h in halves]))
    for key in whole.sparse_features.keys():
        parts = [h.sparse_features[key] for h in halves]
        assert torch.equal(whole.sparse_features[key].values(), torch.cat([p.values() for p in parts]))
        assert torch.equal(whole.sparse_features[key].lengths(), torch.cat([p.lengths() for p in parts]))


def test_deterministic_and_distinct_per_step_seed_and_stream() -> None:
    a, b = _data(), _data()
    assert torch.equal(a.batch(3, 0, 16).labels, b.batch(3, 0, 16).labels)
    base = a.batch(3, 0, 256).dense_features
    assert not torch.equal(base, a.batch(4, 0, 256).dense_features)
    assert not torch.equal(base, a.batch(3, 0, 256, EVAL_STREAM).dense_features)
    assert not torch.equal(base, _data("train.seed=1").batch(3, 0, 256).dense_features)


def test_ids_in_range_and_zipf_skewed() -> None:
    data = _data("model.num_embeddings_per_feature=[1000]*8".replace("[1000]*8", str([1000] * 8)))
    ids = data.batch(0, 0, 4096).sparse_features["cat_0"].values()
    assert int(ids.min()) >= 0 and int(ids.max()) < 1000
    counts = torch.bincount(ids, minlength=1000).sort(descending=True).values
    assert counts[:10].sum() > 0.25 * counts.sum()  # the head dominates
    uniform = _data("data.zipf_exponent=0").batch(0, 0, 4096).sparse_features["cat_0"].values()
    assert torch.bincount(uniform, minlength=1000).max() < 20


def test_pooling_fixed_and_variable() -> None:
    fixed = _data().batch(0, 0, 100).sparse_features
    assert torch.all(fixed["cat_6"].lengths() == 3)
    variable = _data("data.variable_pooling=true").batch(0, 0, 500).sparse_features["cat_6"].lengths()
    assert int(variable.min()) == 1 and int(variable.max()) == 3


def test_labels_follow_the_teacher() -> None:
    """A linear probe on per-feature teacher scores separates labels: there is signal to learn."""
    data = _data()
    batch = data.batch(0, 0, 8192)
    dense = batch.dense_features.double()
    score = (dense - 0.6) @ data._dense_weight
    y = batch.labels.double()
    assert 0.2 < float(y.mean()) < 0.8
    assert float(score[y == 1].mean() - score[y == 0].mean()) > 0.1


def test_hash_coords_broadcasts() -> None:
    h = hash_coords(1, torch.arange(3)[:, None], torch.arange(4)[None, :])
    assert h.shape == (3, 4) and len(set(h.flatten().tolist())) == 12


@pytest.mark.parametrize("overrides", [
    (),
    ("model.num_embeddings_per_feature=[20000000,10,300,5]", "model.multi_hot_sizes=[3,1,3,7]"),  # scores hashed
    ("model.num_embeddings_per_feature=[100,200,300,400]", "model.multi_hot_sizes=[2,9,2,1]"),
    ("model.num_embeddings_per_feature=[100,200,300,400]", "model.multi_hot_sizes=[5,5,5,5]"),  # one pooling: a transpose
    ("model.num_embeddings_per_feature=[100,200,300,400]", "model.multi_hot_sizes=[1,1,1,1]"),
])
def test_one_grid_draw_matches_the_per_pooling_draw(overrides: tuple[str, ...]) -> None:
    data = _data(*overrides)
    rows, key = torch.arange(40, 104), (data.spec.seed, 0, 5)
    kjt, scores = data._sparse_fixed(key, rows)
    lengths, ids, expected_scores = data._sparse(key, rows)
    assert torch.equal(kjt.values(), ids) and torch.equal(kjt.lengths(), lengths)
    assert torch.equal(scores, expected_scores)
    per_key = lengths.view(len(kjt.keys()), len(rows)).sum(1).tolist()
    assert kjt.length_per_key() == per_key

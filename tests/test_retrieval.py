"""Retrieval: MovieLens layouts, the per-user time split, exact ranking metrics, the two-tower
model's in-batch softmax, and training end to end (sharded = one process)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from torchrec_models.config import ConfigError, load_config
from torchrec_models.retrieval.metrics import Pairs, metric_names, popularity_scores, ranking_sums
from torchrec_models.retrieval.movielens import MovieLensDataError, read_movielens
from torchrec_models.retrieval.preprocess import preprocess_movielens, time_split

PRESET = ROOT / "configs" / "two_tower_movielens.toml"
GENRES = ["Action", "Comedy", "Drama"]


def _ratings(users: int = 30, items: int = 40, seed: int = 0, per_user: int = 12) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp): users of taste u mod 3 give 5 to items with i mod 3 equal, 1-3 to others."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, users + 1):
        for k, i in enumerate(rng.choice(np.arange(1, items + 1), per_user, replace=False)):
            liked = (i % 3) == (u % 3)
            rows.append((u, int(i), 5 if liked else int(rng.integers(1, 4)), 1000 * u + 10 * k))
    return rows


def write_layout(root: Path, layout: str, rows) -> Path:
    """The same ratings in one of the downloadable layouts."""
    root.mkdir(parents=True, exist_ok=True)
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    if layout == "atomic":
        (root / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
        (root / "ml.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                      + "".join(f"{u}\t{20 + u % 5}\t{'MF'[u % 2]}\tjob{u % 4}\t0\n" for u in users))
        (root / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      + "".join(f"{i}\tT{i}\t1990\t{GENRES[i % 3]}\n" for i in items))
    elif layout == "ml-100k":
        (root / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
        (root / "u.user").write_text("".join(f"{u}|{20 + u % 5}|{'MF'[u % 2]}|job{u % 4}|0\n" for u in users))
        (root / "u.genre").write_text("".join(f"{g}|{j}\n" for j, g in enumerate(GENRES)))
        flags = lambda i: "|".join("1" if j == i % 3 else "0" for j in range(3))  # noqa: E731
        (root / "u.item").write_text("".join(f"{i}|T{i}|01-Jan-1990||url|{flags(i)}\n" for i in items))
    elif layout == "ml-1m":
        (root / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
        (root / "users.dat").write_text("".join(f"{u}::{'MF'[u % 2]}::{20 + u % 5}::job{u % 4}::0\n" for u in users))
        (root / "movies.dat").write_text("".join(f"{i}::T{i} (1990)::{GENRES[i % 3]}\n" for i in items))
    else:
        (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                          + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))
        (root / "movies.csv").write_text("movieId,title,genres\n"
                                         + "".join(f'{i},"T{i}, The (1990)",{GENRES[i % 3]}\n' for i in items))
    return root


@pytest.mark.parametrize("layout", ["atomic", "ml-100k", "ml-1m", "ml-csv"])
def test_every_layout_reads_the_same_ratings_and_genres(tmp_path: Path, layout: str) -> None:
    rows = _ratings()
    raw = read_movielens(write_layout(tmp_path, layout, rows))
    assert raw.layout == layout and len(raw.users) == len(rows)
    assert sorted(zip(raw.users.astype(int), raw.items.astype(int), raw.ratings.astype(int), raw.timestamps)) \
        == sorted(rows)
    assert all(raw.item_genres[str(i)] == [GENRES[i % 3]] for i in {r[1] for r in rows})
    if layout != "ml-csv":  # the csv layouts have no user file
        assert raw.user_features["7"] == {"age": "22", "gender": "F", "occupation": "job3"}


def test_time_split_takes_each_users_last_ratings() -> None:
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    stamps = np.array([5, 1, 4, 2, 3, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 7])
    test = time_split(user, stamps, 0.2)
    assert sorted(stamps[test & (user == 0)]) == [5]  # 1 of 5
    assert sorted(stamps[test & (user == 1)]) == [9, 10]  # 2 of 10
    assert not test[user == 2].any()  # a single rating stays in training


def test_preprocess_writes_a_time_split_without_leaks(tmp_path: Path) -> None:
    rows = _ratings()
    meta = preprocess_movielens(write_layout(tmp_path / "in", "atomic", rows), tmp_path / "out")
    load = lambda n: np.load(tmp_path / "out" / f"{n}.npy")  # noqa: E731
    assert meta["users"] == 30 and meta["tables"]["genre"] == 4 and meta["tables"]["gender"] == 3
    seen = set(zip(load("seen_user"), load("seen_item")))
    test = set(zip(load("test_user"), load("test_item")))
    assert test and not (test & seen) and set(zip(load("train_user"), load("train_item"))) <= seen
    user_ids = load("user_ids")
    by_user = {}
    for u, i, r, t in rows:
        by_user.setdefault(str(u), []).append((t, r))
    for u, i in test:  # every test positive is one of its user's last 2 of 12 ratings, rated >= 4
        last = sorted(by_user[user_ids[u]])[-2:]
        assert any(r >= 4 for _, r in last)
    with pytest.raises(MovieLensDataError, match="not empty"):
        preprocess_movielens(tmp_path / "in", tmp_path / "out")


def test_a_bad_ratings_line_names_file_and_line(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "in", "ml-1m", _ratings())
    lines = (root / "ratings.dat").read_text().splitlines()
    lines[6] = "3::17::five::100"
    (root / "ratings.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(MovieLensDataError, match=r"ratings.dat:7: rating and timestamp must be numbers"):
        read_movielens(root)
    done = run_cli("preprocess", "movielens", "--input", str(root), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "ratings.dat:7" in done.stderr and not (tmp_path / "out").exists()


def test_ranking_metrics_by_hand() -> None:
    """Two users, five items. User 0: test {1}, seen {0}; user 1: test {2, 4}, seen {}."""
    test = Pairs.group(np.array([0, 1, 1]), np.array([1, 2, 4]), 2)
    seen = Pairs.group(np.array([0]), np.array([0]), 2)
    scores = torch.tensor([[9.0, 1.0, 8.0, 7.0, 6.0],   # seen item 0 excluded -> ranks 2, 3, 4, 1
                           [5.0, 4.0, 3.0, 2.0, 1.0]])  # ranks 0, 1, 2, 3, 4
    sums = ranking_sums(np.array([0, 1]), lambda chunk: scores[chunk], test, seen, ks=(1, 3))
    got = dict(zip(metric_names((1, 3)), sums))
    assert got["recall_at_1"] == 0 and got["recall_at_3"] == pytest.approx(0 + 0.5)
    ndcg_user1 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))  # item 2 at rank 3 of ideal 2
    assert got["ndcg_at_3"] == pytest.approx(0 + ndcg_user1)
    pop = popularity_scores(np.array([3, 3, 1]), 5)(np.array([0, 1]))
    assert pop.shape == (2, 5) and pop[0, 3] == 2


def test_config_takes_tables_from_the_data_and_checks_the_pairing(tmp_path: Path) -> None:
    preprocess_movielens(write_layout(tmp_path / "in", "atomic", _ratings()), tmp_path / "out")
    cfg = load_config(PRESET, [f"data.path={tmp_path / 'out'}"])
    assert cfg.model.num_embeddings_per_feature == [30, 6, 3, 5, 40, 4] and cfg.model.user_feature_count == 4
    with pytest.raises(ConfigError, match="model.num_embeddings_per_feature"):
        load_config(PRESET, [f"data.path={tmp_path / 'out'}", "model.num_embeddings_per_feature=[1,1,1,1,1,1]"])
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(PRESET, [f"data.path={tmp_path / 'out'}", "data.kind=synthetic"])
    with pytest.raises(ConfigError, match="train.best_metric"):
        load_config(PRESET, [f"data.path={tmp_path / 'out'}", "train.best_metric=auc"])


def test_in_batch_logits_mask_duplicates_and_subtract_log_q() -> None:
    from torchrec_models.retrieval.model import in_batch_logits

    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    users = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    items = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    ids = torch.tensor([0, 2, 0])
    logits, target = in_batch_logits(users, items, ids, log_q, 0.5)
    assert target.tolist() == [0, 1, 2]
    assert logits[0, 2] == -math.inf and logits[2, 0] == -math.inf  # the other copy of item 0
    expected = (users[1] @ items[0]) / 0.5 - math.log(0.5)
    assert logits[1, 0] == pytest.approx(float(expected), abs=1e-5)

    # two extra rows carry uniformly drawn items (1 and 0): two more columns, corrected by log(1/3)
    negatives = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    wide, target = in_batch_logits(torch.cat([users, torch.zeros(2, 4)]), torch.cat([items, negatives]),
                                   torch.cat([ids, torch.tensor([1, 0])]), log_q, 0.5, extra=2)
    assert wide.shape == (3, 5) and target.tolist() == [0, 1, 2]
    assert torch.equal(wide[:, :3], logits)
    assert wide[2, 3] == pytest.approx(float(users[2] @ negatives[0] / 0.5 + math.log(3)), abs=1e-5)
    assert wide[0, 4] == -math.inf and wide[2, 4] == -math.inf  # the drawn item 0 is their positive


@pytest.fixture(scope="module")
def taste_data(tmp_path_factory) -> Path:
    """400 users x 300 items, 30 ratings each; a user likes the items of their own taste (of 3)."""
    tmp = tmp_path_factory.mktemp("movielens")
    preprocess_movielens(write_layout(tmp / "in", "atomic", _ratings(400, 300, seed=1, per_user=30)), tmp / "out")
    return tmp / "out"


@pytest.mark.slow
@pytest.mark.usefixtures("rank_server_for_module")
def test_two_ranks_match_one_process_with_gathered_negatives(taste_data: Path) -> None:
    """20 steps at a global batch of 64: 2 ranks x 32 (negatives gathered across ranks) against
    1 process x 64, every parameter within 1e-5. With extra uniform negatives the tables use SGD:
    row-wise Adagrad divides each row's step by its own gradient's size, which turns reduction-order
    noise (1e-6 after 2 steps in either variant) on rows with near-zero gradients into 1e-3 by step 20."""
    from torchrec_models.train.oracle import max_abs_diff, run_variants

    base = [f"data.path={taste_data}", "train.epochs=0", "train.warmup_steps=0",
            "train.dense_optimizer=sgd", "train.lr=0.05", "sharding.type=table_wise"]
    variants = {"in_batch": base,
                "extra_negatives": base + ["model.extra_negatives=16", "train.embedding_optimizer=sgd"]}
    sharded = run_variants(str(PRESET), variants, 2, 32, 20)
    single = run_variants(str(PRESET), variants, 1, 64, 20)
    for name in variants:
        diffs = max_abs_diff(sharded[name]["state"], single[name]["state"])
        assert max(diffs.values()) < 1e-5, (name, sorted(diffs.items(), key=lambda kv: -kv[1])[:3])
        assert any(k.endswith("embedding_bags.t_cat_4.weight") for k in diffs)  # the item-id table
    plain_sgd = run_variants(str(PRESET), {"sgd": base + ["train.embedding_optimizer=sgd"]}, 1, 64, 20)["sgd"]
    moved = max_abs_diff(plain_sgd["state"], single["extra_negatives"]["state"])
    assert max(moved.values()) > 1e-4  # the extra negatives change training


@pytest.mark.slow
def test_preset_learns_more_than_popularity_and_resumes_exactly(taste_data: Path, tmp_path: Path) -> None:
    sets = [f"data.path={taste_data}", "train.epochs=0", "train.steps=60", "train.batch_size=64",
            "checkpoint.every=30"]
    whole = tmp_path / "whole"
    done = run_cli("train", "--config", str(PRESET), "--nproc-per-node", "2", "--run-dir", str(whole),
                   "--set", *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((whole / "summary.json").read_text())
    ev, pop = summary["eval"], summary["eval"]["popularity_baseline"]
    assert set(pop) == set(metric_names()) and ev["examples"] == summary["eval"]["examples"] > 300
    assert ev["recall_at_10"] > 1.5 * pop["recall_at_10"] and ev["ndcg_at_10"] > 1.5 * pop["ndcg_at_10"]
    assert summary["warnings"] == []
    parts = tmp_path / "parts"
    for steps in (30, 60):
        done = run_cli("train", "--config", str(PRESET), "--nproc-per-node", "2", "--run-dir", str(parts),
                       "--set", *sets[:2], f"train.steps={steps}", *sets[3:])
        assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((parts / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 30
    for key in metric_names():
        assert resumed["eval"][key] == pytest.approx(ev[key], abs=1e-9)


@pytest.mark.slow
def test_export_writes_item_vectors_that_rank_like_training(taste_data: Path, tmp_path: Path) -> None:
    """export: the state dict plus one unit vector per item (rows in item-index order) and raw ids."""
    from torchrec_models.serving.export import item_vector_paths

    run = tmp_path / "run"
    done = run_cli("train", "--config", str(PRESET), "--run-dir", str(run), "--set", f"data.path={taste_data}",
                   "train.epochs=0", "train.steps=30", "train.batch_size=64")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "model.pt"
    done = run_cli("export", "--checkpoint", str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    vectors_path, ids_path = item_vector_paths(out)
    vectors, ids = np.load(vectors_path), np.load(ids_path)
    assert vectors.shape == (300, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert list(ids) == list(np.load(taste_data / "item_ids.npy"))
    genre = np.array([int(i) % 3 for i in ids])  # items of one taste class point the same way
    same = vectors[genre == 0] @ vectors[genre == 0].T
    other = vectors[genre == 0] @ vectors[genre == 1].T
    assert same.mean() > other.mean() + 0.1

    trained = json.loads((run / "summary.json").read_text())["eval"]
    done = run_cli("evaluate", "--checkpoint", str(run), "--data", str(taste_data), "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads(done.stdout.strip().splitlines()[-1])
    assert again["step"] == 30 and again["examples"] == trained["examples"]
    for key in metric_names():  # 2 ranks now, 1 in training: the same rankings
        assert again[key] == pytest.approx(trained[key], abs=2e-3)
    done = run_cli("predict", "--checkpoint", str(run), "--data", str(taste_data), "--out", str(tmp_path / "p.npy"))
    assert done.returncode == 2 and "evaluate" in done.stderr and not (tmp_path / "p.npy").exists()


def test_synthetic_ratings_plant_affinity_and_zipf_popularity() -> None:
    from torchrec_models.retrieval.synthetic import synthetic_ratings

    a, b = synthetic_ratings(500, 2000, 20, seed=3), synthetic_ratings(500, 2000, 20, seed=3)
    assert (a.items == b.items).all() and (a.users == b.users).all()
    topic = np.array([int(a.item_genres[i][0][5:]) for i in a.items])
    users = a.users.astype(int)
    favourite_share = np.mean([np.bincount(topic[users == u]).max() / 20 for u in range(500)])
    assert favourite_share > 0.7  # affinity 0.8 plus chance
    counts = np.sort(np.bincount(a.items.astype(int), minlength=2000))[::-1]
    assert counts[:20].sum() > 0.2 * counts.sum()  # the top 1% of items take over a fifth of interactions
    assert len(a.item_genres) == 2000  # the whole catalogue, rated or not


@pytest.mark.slow
@pytest.mark.quality
def test_preset_on_the_planted_generator_beats_popularity(tmp_path: Path) -> None:
    data = tmp_path / "synth"
    done = run_cli("preprocess", "movielens-synthetic", "--users", "3000", "--items", "2000",
                   "--ratings-per-user", "20", "--out", str(data))
    assert done.returncode == 0 and "2,000 items" in done.stdout, done.stderr[-2000:]
    run = tmp_path / "run"
    done = run_cli("train", "--config", str(PRESET), "--nproc-per-node", "2", "--run-dir", str(run),
                   "--set", f"data.path={data}", "train.epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    ev = json.loads((run / "summary.json").read_text())["eval"]
    assert ev["examples"] == 3000
    assert ev["recall_at_100"] > 1.6 * ev["popularity_baseline"]["recall_at_100"]  # seen: 1.9x

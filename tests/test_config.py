"""Config: presets load, overrides apply, and every kind of bad value is one clear error."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_cli
from torchrec_models.config import ConfigError, load_config
from torchrec_models.sharding.planner import validate_for_device

PRESETS = sorted((ROOT / "configs").glob("*.toml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_load(preset: Path, tmp_path: Path) -> None:
    """Presets that read files (their tables are the data's) load against a small generated set."""
    from torchrec_models.config import read_toml

    overrides = []
    if read_toml(preset).get("data", {}).get("kind") == "movielens":
        from torchrec_models.retrieval.preprocess import SplitOptions, preprocess_raw
        from torchrec_models.retrieval.synthetic import synthetic_ratings

        preprocess_raw(synthetic_ratings(50, 80, 10), tmp_path / "ml", SplitOptions(), "test")
        overrides.append(f"data.path={tmp_path / 'ml'}")
    cfg = load_config(preset, overrides)
    assert cfg.model.num_sparse_features == len(cfg.model.multi_hot_sizes)


def test_presets_present() -> None:
    assert {p.stem for p in PRESETS} >= {"tiny", "dlrm_criteo_onehot", "dlrm_dcnv2_mlperf"}


def test_criteo_onehot_shape() -> None:
    cfg = load_config(ROOT / "configs" / "dlrm_criteo_onehot.toml")
    m = cfg.model
    assert m.num_embeddings_per_feature == [100_000] * 26 and m.multi_hot_sizes == [1] * 26
    assert (m.embedding_dim, m.dense_in_features) == (64, 13)
    assert m.bottom_mlp == [512, 256, 64] and m.top_mlp == [512, 512, 256, 1]
    assert cfg.train.batch_size == 2048 and cfg.train.embedding_optimizer == "rowwise_adagrad"


def test_dcnv2_mlperf_shape() -> None:
    cfg = load_config(ROOT / "configs" / "dlrm_dcnv2_mlperf.toml")
    m = cfg.model
    assert m.arch == "dcn" and m.embedding_dim == 128 and len(m.num_embeddings_per_feature) == 26
    assert max(m.num_embeddings_per_feature) == 40_000_000
    assert m.bottom_mlp == [512, 256, 128] and m.top_mlp == [1024, 1024, 512, 256, 1]
    assert (m.dcn_num_layers, m.dcn_low_rank_dim) == (3, 512)
    assert max(m.multi_hot_sizes) == 100


def test_overrides_apply_with_types() -> None:
    cfg = load_config(TINY, ["train.batch_size=4096", "train.lr=1", "sharding.type=row_wise",
                             "model.max_rows_per_table=100", "data.variable_pooling=true"])
    assert cfg.train.batch_size == 4096
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.sharding.type == "row_wise"
    assert max(cfg.model.table_rows()) == 100
    assert cfg.data.variable_pooling is True


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_sise=4", "train.batch_sise"),          # unknown key
        ("trian.steps=4", "trian.steps"),                     # unknown section
        ("train.batch_size=abc", "train.batch_size"),         # wrong type
        ("train.batch_size=1.5", "train.batch_size"),         # float for int
        ("train.steps=true", "train.steps"),                  # bool for int
        ("train.lr=true", "train.lr"),                        # bool for float
        ("model.bottom_mlp=[64, 'a']", "model.bottom_mlp[1]"),  # wrong element type
        ("model.bottom_mlp=64", "model.bottom_mlp"),          # scalar for list
        ("train.batch_size=0", "train.batch_size"),           # zero size
        ("model.num_embeddings_per_feature=[10, -1, 10, 10, 10, 10, 10, 10]", "model.num_embeddings_per_feature"),
        ("train.lr=-0.1", "train.lr"),                        # negative
        ("model.arch=transformer", "model.arch"),             # bad choice
        ("sharding.type=diagonal", "sharding.type"),
        ("sharding.kernel=magic", "sharding.kernel"),
        ("train.precision=fp8", "train.precision"),
        ("model.bottom_mlp=[64, 8]", "model.bottom_mlp"),     # impossible: last != embedding_dim
        ("model.top_mlp=[64, 2]", "model.top_mlp"),           # impossible: not one logit
        ("model.multi_hot_sizes=[1, 1]", "model.multi_hot_sizes"),  # length mismatch
        ("train.decay_start=10", "train.decay_steps"),        # decay without length
        ("sharding.min_partition=5", "sharding.min_partition"),  # does not divide the dim
        ("sharding.per_table.t_cat_99=row_wise", "sharding.per_table.t_cat_99"),
        ("data.kind=criteo", "data.path"),                    # criteo without a path
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert err.value.key == key
    assert f"'{key}'" in str(err.value)


def test_rowwise_adagrad_needs_the_fused_kernel_for_sharded_tables() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["sharding.kernel=dense", "sharding.type=table_wise"])
    assert err.value.key == "train.embedding_optimizer"
    load_config(TINY, ["sharding.kernel=dense", "sharding.type=table_wise", "train.embedding_optimizer=adagrad"])
    load_config(TINY, ["sharding.kernel=dense", "sharding.type=data_parallel"])


def test_two_tower_refuses_bf16_instead_of_ignoring_it() -> None:
    two_tower = str(ROOT / "configs" / "two_tower_movielens.toml")
    with pytest.raises(ConfigError) as err:
        load_config(two_tower, ["train.precision=bf16", "data.path=/no/such/ratings"])  # refused before reading
    assert err.value.key == "train.precision" and "fp32" in str(err.value)


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(TINY, ["train.batch_size"])


def test_bad_toml_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_size = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatchsize = 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert err.value.key == "train.batchsize"


def test_kernel_the_device_cannot_run() -> None:
    cfg = load_config(TINY, ["sharding.kernel=fused_uvm_caching"])
    with pytest.raises(ConfigError) as err:
        validate_for_device(cfg, "cpu")
    assert err.value.key == "sharding.kernel"
    validate_for_device(cfg, "cuda")  # fine where it can run


def test_cli_rejects_bad_config_and_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = run_cli("train", "--config", TINY, "--set", "train.batch_size=abc", "--run-dir", str(run_dir))
    assert out.returncode == 2
    assert "train.batch_size" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_config_loading_executes_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    with pytest.raises(ConfigError):
        load_config(TINY, [f"train.batch_size={payload}"])
    evil = tmp_path / "evil.toml"
    evil.write_text(f'[data]\npath = "{payload}"\n')
    assert load_config(evil).data.path == payload  # stays a string
    assert not marker.exists()

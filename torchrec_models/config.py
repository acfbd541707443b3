"""Typed run configuration: one dataclass per component, TOML presets, dotted overrides.

Every mistake (unknown key, wrong type, impossible combination) raises ``ConfigError``
naming the offending key, before anything is written.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ARCHS = ("dlrm", "dcn", "projection", "two_tower")
RANKING_ARCHS = ("dlrm", "dcn", "projection")
RANKING_METRICS = ("ne", "logloss", "auc")  # ne and logloss: lower is better
RETRIEVAL_METRICS = tuple(f"{m}_at_{k}" for m in ("recall", "ndcg") for k in (10, 50, 100))
SHARDING_TYPES = (
    "data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise",
)
KERNELS = ("fused", "dense", "fused_uvm_caching")
PRECISIONS = ("fp32", "bf16")
CPU_TABLE_UPDATES = ("auto", "native", "fbgemm")
CPU_INTERACTIONS = ("auto", "native", "torch")
CPU_MLPS = ("auto", "native", "torch")
CPU_GEMMS = ("auto", "torch", "openblas")
OUTPUT_BIASES = ("init", "label_rate")
EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
DENSE_OPTIMIZERS = ("adagrad", "sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
EMBEDDING_DTYPES = ("fp32", "fp16")
QCOMMS = ("none", "fp16", "bf16")
CPU_TRANSPORTS = ("auto", "shm", "gloo")
CPU_POOLED_ALL_TO_ALL = ("auto", "torchrec")


class ConfigError(ValueError):
    """A configuration mistake; the message names the key (or the file)."""

    def __init__(self, key: str, problem: str, *, where: str = "config key") -> None:
        super().__init__(f"{where} '{key}': {problem}")
        self.key = key


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}")


def _check_positive(key: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def _check_sizes(key: str, values: list[int]) -> None:
    if not values:
        raise ConfigError(key, "must not be empty")
    for v in values:
        _check_positive(key, v)


@dataclass
class ModelConfig:
    """The ranker: DLRM, DLRM-DCNv2 or DLRM-Projection over one table per sparse feature."""

    arch: str = "dlrm"
    embedding_dim: int = 16
    num_embeddings_per_feature: list[int] = field(default_factory=lambda: [1000] * 4)
    multi_hot_sizes: list[int] = field(default_factory=lambda: [1] * 4)
    max_rows_per_table: int = 0  # 0 = no cap
    dense_in_features: int = 13
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 16])
    top_mlp: list[int] = field(default_factory=lambda: [64, 1])
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 64
    projection_branch1: list[int] = field(default_factory=lambda: [64, 32])
    projection_branch2: list[int] = field(default_factory=lambda: [64, 32])
    embedding_dtype: str = "fp32"  # table weights: fp32 or fp16 (half the bytes)
    user_feature_count: int = 0  # two_tower: the first this many features feed the user tower, the rest the item tower
    tower_mlp: list[int] = field(default_factory=lambda: [128, 64])  # two_tower: each tower's layers; the last is the vector
    temperature: float = 0.05  # two_tower: softmax temperature over cosine similarities
    logq_correction: bool = True  # two_tower: subtract log(item frequency) from in-batch logits
    extra_negatives: int = 0  # two_tower: items drawn uniformly each step, shared by every rank, as more negatives
    output_bias: str = "init"  # the logit's bias: as the layer initializes it, or the log-odds of the training label rate (files only)

    def __post_init__(self) -> None:
        _check_choice("model.arch", self.arch, ARCHS)
        _check_choice("model.embedding_dtype", self.embedding_dtype, EMBEDDING_DTYPES)
        _check_choice("model.output_bias", self.output_bias, OUTPUT_BIASES)
        _check_positive("model.embedding_dim", self.embedding_dim)
        if self.arch == "two_tower":
            self._check_towers()
            if not (self.num_embeddings_per_feature and self.multi_hot_sizes):
                return  # the data's tables fill them (Config checks)
        _check_sizes("model.num_embeddings_per_feature", self.num_embeddings_per_feature)
        _check_sizes("model.multi_hot_sizes", self.multi_hot_sizes)
        if len(self.multi_hot_sizes) != len(self.num_embeddings_per_feature):
            raise ConfigError(
                "model.multi_hot_sizes",
                f"has {len(self.multi_hot_sizes)} entries but model.num_embeddings_per_feature "
                f"has {len(self.num_embeddings_per_feature)}",
            )
        if self.max_rows_per_table < 0:
            raise ConfigError("model.max_rows_per_table", "must be >= 0 (0 means no cap)")
        if self.arch == "two_tower":
            if not 0 < self.user_feature_count < self.num_sparse_features:
                raise ConfigError("model.user_feature_count", f"must leave features for both towers: 1 to "
                                  f"{self.num_sparse_features - 1}, got {self.user_feature_count}")
            return
        _check_positive("model.dense_in_features", self.dense_in_features)
        for key in ("bottom_mlp", "top_mlp", "projection_branch1", "projection_branch2"):
            _check_sizes(f"model.{key}", getattr(self, key))
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ConfigError(
                "model.bottom_mlp",
                f"last layer {self.bottom_mlp[-1]} must equal model.embedding_dim {self.embedding_dim}",
            )
        if self.top_mlp[-1] != 1:
            raise ConfigError("model.top_mlp", f"last layer must be 1 (one logit), got {self.top_mlp[-1]}")
        _check_positive("model.dcn_num_layers", self.dcn_num_layers)
        _check_positive("model.dcn_low_rank_dim", self.dcn_low_rank_dim)
        for key in ("projection_branch1", "projection_branch2"):
            if self.arch == "projection" and getattr(self, key)[-1] % self.embedding_dim:
                raise ConfigError(
                    f"model.{key}", f"last layer must be a multiple of model.embedding_dim {self.embedding_dim}"
                )

    def _check_towers(self) -> None:
        _check_sizes("model.tower_mlp", self.tower_mlp)
        _check_positive("model.temperature", self.temperature)
        if self.extra_negatives < 0:
            raise ConfigError("model.extra_negatives", f"must be >= 0, got {self.extra_negatives}")

    @property
    def num_sparse_features(self) -> int:
        return len(self.num_embeddings_per_feature)

    def table_rows(self) -> list[int]:
        """Rows per table after ``max_rows_per_table`` is applied."""
        cap = self.max_rows_per_table
        return [min(n, cap) if cap else n for n in self.num_embeddings_per_feature]


@dataclass
class DataConfig:
    """Where batches come from: the synthetic generator (default) or preprocessed Criteo files."""

    kind: str = "synthetic"
    path: str = ""
    zipf_exponent: float = 1.05
    variable_pooling: bool = False
    label_noise: float = 0.0  # synthetic: fraction of labels flipped at random
    eval_examples: int = 32768  # synthetic: the held-out stream's size, evaluated whole when train.eval_steps = 0
    eval_path: str = ""  # criteo: a preprocessed directory for evaluation
    eval_fraction: float = 0.0  # criteo without eval_path: the last fraction of data.path is held out
    shuffle: bool = False  # criteo: a deterministic permutation per epoch, seeded by train.seed
    out_of_range: str = "error"  # criteo ids >= the table's rows: "error", or "hash" (id % rows, counted)
    multi_hot: bool = False  # criteo: expand each id to model.multi_hot_sizes ids (MLPerf DCNv2)
    multi_hot_distribution: str = "uniform"  # the extra ids' distribution: "uniform" or "pareto"

    def __post_init__(self) -> None:
        _check_choice("data.kind", self.kind, ("synthetic", "criteo", "movielens"))
        if self.kind in ("criteo", "movielens") and not self.path:
            raise ConfigError("data.path", f"is required when data.kind = '{self.kind}'")
        _check_choice("data.out_of_range", self.out_of_range, ("error", "hash"))
        _check_choice("data.multi_hot_distribution", self.multi_hot_distribution, ("uniform", "pareto"))
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError("data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        if self.eval_path and self.eval_fraction:
            raise ConfigError("data.eval_fraction", "must be 0 when data.eval_path is set")
        if self.kind == "criteo" and not (self.eval_path or self.eval_fraction):
            raise ConfigError("data.eval_path", "data.kind = 'criteo' needs held-out data: "
                              "set data.eval_path, or data.eval_fraction in (0, 1)")
        if self.multi_hot and self.kind != "criteo":
            raise ConfigError("data.multi_hot", "applies to data.kind = 'criteo' only "
                              "(synthetic data already follows model.multi_hot_sizes)")
        if self.zipf_exponent < 0:
            raise ConfigError("data.zipf_exponent", f"must be >= 0, got {self.zipf_exponent}")
        _check_positive("data.eval_examples", self.eval_examples)
        if not 0.0 <= self.label_noise < 0.5:
            raise ConfigError("data.label_noise", f"must be in [0, 0.5), got {self.label_noise}")


@dataclass
class ShardingConfig:
    """How tables are placed: the planner's choice, or one forced type for every table."""

    type: str = ""  # empty = the planner's choice
    kernel: str = "fused"
    device: str = "auto"  # auto = cuda when available, else cpu
    per_table: dict[str, str] = field(default_factory=dict)  # table name -> sharding type
    min_partition: int = 0  # smallest column shard for column-wise types; 0 = the planner's default
    hbm_gb: float = 0.0  # per-device memory cap for the planner; 0 = the device's own size
    ddr_gb: float = 0.0  # per-host memory cap; 0 = the planner's default
    cache_load_factor: float = 0.2  # fused_uvm_caching: fraction of each table's rows cached in HBM
    qcomm: str = "none"  # precision of the embedding all-to-all / reduce-scatter: none, fp16, bf16
    cpu_transport: str = "auto"  # CPU ranks' per-step collectives: auto (shm on one host), shm, gloo
    cpu_pooled_all_to_all: str = "auto"  # pooled embeddings over shm: auto (moved in the step's layouts), torchrec
    cpu_balance: bool = False  # CPU ranks take shares of each global batch in proportion to their pace
    cpu_balance_every: int = 4  # steps between share updates

    def __post_init__(self) -> None:
        if self.type:
            _check_choice("sharding.type", self.type, SHARDING_TYPES)
        _check_choice("sharding.kernel", self.kernel, KERNELS)
        _check_choice("sharding.device", self.device, DEVICES)
        for table, kind in self.per_table.items():
            _check_choice(f"sharding.per_table.{table}", kind, SHARDING_TYPES)
        if self.min_partition < 0:
            raise ConfigError("sharding.min_partition", "must be >= 0")
        if self.hbm_gb < 0 or self.ddr_gb < 0:
            raise ConfigError("sharding.hbm_gb" if self.hbm_gb < 0 else "sharding.ddr_gb", "must be >= 0")
        if not 0.0 < self.cache_load_factor <= 1.0:
            raise ConfigError("sharding.cache_load_factor", f"must be in (0, 1], got {self.cache_load_factor}")
        _check_choice("sharding.qcomm", self.qcomm, QCOMMS)
        _check_choice("sharding.cpu_transport", self.cpu_transport, CPU_TRANSPORTS)
        _check_choice("sharding.cpu_pooled_all_to_all", self.cpu_pooled_all_to_all, CPU_POOLED_ALL_TO_ALL)
        if self.cpu_balance_every < 1:
            raise ConfigError("sharding.cpu_balance_every", f"must be >= 1, got {self.cpu_balance_every}")
        if self.cpu_balance and self.cpu_transport == "gloo":
            raise ConfigError("sharding.cpu_balance", "times the ranks' waits in the shared-memory transport: "
                              "set sharding.cpu_transport to auto or shm")


@dataclass
class TrainConfig:
    """The loop: batch size per rank, steps, optimizers, LR schedule, precision, evaluation."""

    batch_size: int = 256
    steps: int = 200
    epochs: int = 0  # > 0: train this many passes over data.path (criteo) instead of train.steps
    seed: int = 0
    lr: float = 0.05
    embedding_lr: float = 0.0  # 0 = train.lr
    dense_optimizer: str = "adagrad"
    embedding_optimizer: str = "rowwise_adagrad"
    warmup_steps: int = 0
    decay_start: int = 0  # 0 = no decay
    decay_steps: int = 0
    precision: str = "fp32"
    eval_every: int = 0  # 0 = only at the end
    eval_steps: int = 0  # 0 = the whole eval set once; N = N global batches (never past the set's end)
    log_every: int = 20
    measure_after: int = 5  # steps left out of examples/s as warm-up
    tf32: bool = True  # on CUDA, fp32 matmuls and convolutions of the dense part use TF32
    cpu_table_update: str = "auto"  # row-wise Adagrad tables on CPU: native (this project's kernel), fbgemm, auto
    cpu_interaction: str = "auto"  # DLRM's dot interaction on CPU: native (this project's fused kernel), torch, auto
    cpu_mlp: str = "auto"  # MLP layers' bias + ReLU on CPU: native (one pass around each GEMM), torch, auto
    cpu_gemm: str = "auto"  # fp32 GEMMs of those layers on CPU: torch (MKL), openblas (numpy's), auto (openblas on AMD)
    cpu_keep_freed_memory: bool = True  # on CPU, freed host blocks < 1 GiB are reused, not returned to the OS
    cpu_huge_pages: bool = True  # on CPU, the tables' host memory in 2 MiB pages (Linux transparent huge pages)
    compile: bool = False  # compile the dense part (bottom MLP, interaction, top MLP) with torch.compile
    best_metric: str = ""  # what "best evaluation" means; empty = the task's: ne (ranking), recall_at_100 (retrieval)
    early_stop_patience: int = 0  # > 0: stop after this many evaluations without a better best_metric
    profile_dir: str = ""  # non-empty: a torch.profiler trace of profile_steps steps (after measure_after) goes here
    profile_steps: int = 5

    def __post_init__(self) -> None:
        for key in ("batch_size", "steps", "log_every", "profile_steps"):
            _check_positive(f"train.{key}", getattr(self, key))
        _check_positive("train.lr", self.lr)
        for key in ("embedding_lr", "warmup_steps", "decay_start", "decay_steps", "eval_every",
                    "measure_after", "seed", "eval_steps", "epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}", f"must be >= 0, got {getattr(self, key)}")
        _check_choice("train.dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        _check_choice("train.embedding_optimizer", self.embedding_optimizer, EMBEDDING_OPTIMIZERS)
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.cpu_table_update", self.cpu_table_update, CPU_TABLE_UPDATES)
        _check_choice("train.cpu_interaction", self.cpu_interaction, CPU_INTERACTIONS)
        _check_choice("train.cpu_mlp", self.cpu_mlp, CPU_MLPS)
        _check_choice("train.cpu_gemm", self.cpu_gemm, CPU_GEMMS)
        _check_choice("train.best_metric", self.best_metric, ("", *RANKING_METRICS, *RETRIEVAL_METRICS))
        if self.early_stop_patience < 0:
            raise ConfigError("train.early_stop_patience", f"must be >= 0, got {self.early_stop_patience}")
        if self.decay_start and not self.decay_steps:
            raise ConfigError("train.decay_steps", "must be > 0 when train.decay_start is set")


@dataclass
class CheckpointConfig:
    """When and where training state is saved (torch.distributed.checkpoint)."""

    every: int = 0  # steps between checkpoints; 0 = none on the way
    final: bool = True  # also at the last step
    dir: str = ""  # empty = <run dir>/checkpoints
    keep: int = 2  # newest complete checkpoints kept; 0 = all
    keep_best: bool = False  # also keep the checkpoint of the best evaluation (train.best_metric) in <dir>/best

    def __post_init__(self) -> None:
        for key in ("every", "keep"):
            if getattr(self, key) < 0:
                raise ConfigError(f"checkpoint.{key}", f"must be >= 0, got {getattr(self, key)}")


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        part = self.sharding.min_partition
        if part and self.model.embedding_dim % part:
            raise ConfigError(
                "sharding.min_partition", f"{part} must divide model.embedding_dim {self.model.embedding_dim}"
            )
        self._check_dense_kernel_optimizer()
        self._check_task()
        if self.train.epochs and self.data.kind == "synthetic":
            raise ConfigError("train.epochs", "counts passes over data.path (data.kind = 'criteo' or "
                              "'movielens'); the synthetic stream is endless: set train.steps")
        tables = set(table_names(self.model.num_sparse_features))
        for table in self.sharding.per_table:
            if table not in tables:
                raise ConfigError(f"sharding.per_table.{table}", f"no such table (tables: {sorted(tables)})")

    def _check_task(self) -> None:
        """Retrieval reads MovieLens data (its tables are the data's); rankers read the rest."""
        retrieval = self.model.arch == "two_tower"
        if retrieval != (self.data.kind == "movielens"):
            raise ConfigError("model.arch", f"{self.model.arch!r} cannot read data.kind = {self.data.kind!r} "
                              "(two_tower reads movielens; dlrm, dcn and projection read synthetic or criteo)")
        metrics = RETRIEVAL_METRICS if retrieval else RANKING_METRICS
        if self.train.best_metric and self.train.best_metric not in metrics:
            raise ConfigError("train.best_metric", f"{self.train.best_metric!r} is not a metric of "
                              f"{self.model.arch} (one of {', '.join(metrics)})")
        if retrieval and self.sharding.cpu_balance:
            raise ConfigError("sharding.cpu_balance", "splits a ranker's batches unevenly; two_tower's in-batch "
                              "negatives need equal shares (set false)")
        if retrieval and self.train.precision != "fp32":
            raise ConfigError("train.precision", f"{self.train.precision!r} is for the rankers; two_tower "
                              "trains its towers and in-batch softmax in fp32 (set 'fp32')")
        if retrieval:
            from torchrec_models.retrieval.source import fill_tables_from_data

            fill_tables_from_data(self)

    def _check_dense_kernel_optimizer(self) -> None:
        """The dense kernel keeps a sharded table group as one flat weight: no per-row optimizer state."""
        forced = {self.sharding.type, *self.sharding.per_table.values()} - {"", "data_parallel"}
        if self.sharding.kernel == "dense" and forced and self.train.embedding_optimizer == "rowwise_adagrad":
            raise ConfigError(
                "train.embedding_optimizer",
                "rowwise_adagrad needs the fused kernel for sharded tables (the dense kernel stores them "
                "as one flat weight); use adagrad or sgd with sharding.kernel = 'dense'",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def table_names(num_features: int) -> list[str]:
    return [f"t_cat_{i}" for i in range(num_features)]


def feature_names(num_features: int) -> list[str]:
    return [f"cat_{i}" for i in range(num_features)]


# ---------------------------------------------------------------- loading

_SECTIONS = {f.name for f in dataclasses.fields(Config)}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a TOML preset (or the defaults when ``path`` is None) and applies ``k=v`` overrides."""
    raw: dict[str, Any] = read_toml(Path(path)) if path else {}
    for item in overrides:
        apply_override(raw, item)
    return build_config(raw)


def read_toml(path: Path) -> dict[str, Any]:
    """Parses a TOML file; TOML is data only, so nothing in it is executed."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file", where="config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}", where="config file") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies one ``section.key=value`` override; the value is read as a TOML literal, else a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(item, "an override must look like section.key=value", where="override")
    parts = key.split(".")
    if parts[0] not in _SECTIONS or len(parts) < 2:
        raise ConfigError(key, f"unknown key (sections: {', '.join(sorted(_SECTIONS))})")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, f"'{part}' is not a table")
        node = child
    node[parts[-1]] = parse_value(text.strip())


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_config(raw: dict[str, Any]) -> Config:
    return _build(Config, raw, prefix="")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = prefix + name
        if name not in known:
            raise ConfigError(key, f"unknown key (known here: {', '.join(known)})")
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(key, "must be a table of keys")
            kwargs[name] = _build(kind, value, key + ".")
        else:
            kwargs[name] = coerce(key, value, kind)
    return cls(**kwargs)


def coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks ``value`` against a field's type; ints are accepted for floats, nothing else converts."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of {item.__name__}, got {_describe(value)}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(kind)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {_describe(value)}")
        return {k: coerce(f"{key}.{k}", v, item) for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(key, f"expected {kind.__name__}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"

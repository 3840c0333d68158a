"""One YAML file -> one validated, frozen configuration made of per-stage dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

INGEST_FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "coco", "webdataset", "datacomp", "flickr", "mmc4")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key."""


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    ui: bool = False
    # Extra `spark.*` settings, passed through as given.
    conf: dict[str, str] = field(default_factory=dict)
    # The keys of `spark:` that the config file or an override stated (load_config records them):
    # under spark-submit only stated settings are applied, and one stated equal to its default
    # still counts, since spark-submit's own default may differ (200 shuffle partitions, not 8).
    # How the config was written, not a setting: no YAML key, no part of equality or to_dict.
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})

    def validate(self, where: str) -> None:
        if self.shuffle_partitions < 1:
            raise ConfigError(f"{where}.shuffle_partitions: must be >= 1, got {self.shuffle_partitions}")
        for key in self.conf:
            if not key.startswith("spark."):
                raise ConfigError(f"{where}.conf.{key}: Spark settings start with 'spark.'")


@dataclass(frozen=True)
class IngestConfig:
    format: str = "auto"
    text_col: str | None = None
    url_col: str | None = None
    uid_col: str | None = None
    # Captions longer than this many characters are dropped (text_too_long): web pools carry
    # megabyte-long "alt-texts" that are page dumps, not captions.
    max_text_chars: int = 65536
    # Output files: Spark partitions of the written Parquet (0 = keep the input's).
    output_partitions: int = 0
    # With a uid column, rows under different uids can still be the same (url, text) pair:
    # keep the one with the smallest uid, drop the rest as duplicate_url_text.
    drop_duplicate_url_text: bool = True

    def validate(self, where: str) -> None:
        if self.format not in INGEST_FORMATS:
            raise ConfigError(f"{where}.format: {self.format!r} is not one of {', '.join(INGEST_FORMATS)}")
        if self.max_text_chars < 1:
            raise ConfigError(f"{where}.max_text_chars: must be >= 1, got {self.max_text_chars}")
        if self.output_partitions < 0:
            raise ConfigError(f"{where}.output_partitions: must be >= 0, got {self.output_partitions}")


@dataclass(frozen=True)
class MatchConfig:
    # A MetaCLIP metadata.json (JSON list), a {concept: [synonyms]} JSON or a text file, one entry a line.
    metadata: str | None = None
    # "metaclip" is MetaCLIP's exact, case-sensitive matching; "case_insensitive" lowercases both sides.
    mode: str = "metaclip"
    backend: str = "ahocorasick_rs"

    def validate(self, where: str) -> None:
        from pipeline.match import BACKENDS, MODES

        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}.backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class CountConfig:
    # Optional downstream concept list with synonyms ({concept: [synonym, ...]}), counted too.
    concepts: str | None = None

    def validate(self, where: str) -> None:
        pass


@dataclass(frozen=True)
class BalanceConfig:
    # MetaCLIP's threshold t (20k for 400M of a 1.6B pool, 170k for 2.5B) ...
    t: int | None = None
    # ... or the share of all matches that falls in entries with count < t (MetaCLIP 2).
    tail_fraction: float | None = None

    def validate(self, where: str) -> None:
        if self.t is not None and self.tail_fraction is not None:
            raise ConfigError(f"{where}: give either t or tail_fraction, not both")
        if self.t is not None and self.t < 1:
            raise ConfigError(f"{where}.t: must be >= 1, got {self.t}")
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise ConfigError(f"{where}.tail_fraction: must be in (0, 1], got {self.tail_fraction}")


@dataclass(frozen=True)
class DownloadConfig:
    # Owned by the download stage (pipeline/download.py); img2dataset does the fetching.
    image_size: int = 256
    # img2dataset's resize modes: no, keep_ratio, keep_ratio_largest, center_crop, border.
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False
    # webdataset (tars + per-shard Parquet metadata) or parquet (image bytes in the rows).
    output_format: str = "webdataset"
    encode_format: str = "jpg"
    encode_quality: int = 95
    processes: int = 2
    threads: int = 16
    samples_per_shard: int = 10000
    # Seconds per socket operation (connect, each read); a slow server past it is a failure.
    timeout: float = 10.0
    retries: int = 0
    # auto: img2dataset's pyspark distributor when Spark's master is not local, else multiprocessing.
    distributor: str = "auto"
    # Images whose header claims more pixels than this are refused before decoding
    # (decompression bombs); Pillow's own warning threshold by default.
    max_image_pixels: int = 89_478_485
    user_agent_token: str | None = "img2dataset"
    # The URL guard: refuse non-http(s) schemes, credentials in URLs, and hosts resolving to
    # private, loopback, link-local, multicast, reserved or cloud-metadata addresses.
    # allow_hosts lifts it for listed hosts, addresses or networks ("127.0.0.1", "10.0.0.0/8",
    # "images.internal"); allow_private_hosts switches the address checks off (not the scheme check).
    allow_hosts: tuple[str, ...] = ()
    allow_private_hosts: bool = False

    RESIZE_MODES: typing.ClassVar[tuple[str, ...]] = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
    OUTPUT_FORMATS: typing.ClassVar[tuple[str, ...]] = ("webdataset", "parquet")
    ENCODE_FORMATS: typing.ClassVar[tuple[str, ...]] = ("jpg", "png", "webp")
    DISTRIBUTORS: typing.ClassVar[tuple[str, ...]] = ("auto", "multiprocessing", "pyspark")

    def validate(self, where: str) -> None:
        if self.image_size < 8:
            raise ConfigError(f"{where}.image_size: must be >= 8, got {self.image_size}")
        for name, allowed in (
            ("resize_mode", self.RESIZE_MODES), ("output_format", self.OUTPUT_FORMATS),
            ("distributor", self.DISTRIBUTORS), ("encode_format", self.ENCODE_FORMATS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("processes", "threads", "samples_per_shard", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout: must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"{where}.retries: must be >= 0, got {self.retries}")
        from pipeline.urlguard import parse_allow_list

        try:
            parse_allow_list(self.allow_hosts)
        except ValueError as exc:
            raise ConfigError(f"{where}.allow_hosts: {exc}") from None


@dataclass(frozen=True)
class EmbedConfig:
    # Owned by the embed stage (pipeline/embed.py). An open_clip model name (tiny-clip ships
    # with the project for tests and the demo) with a pretrained tag, a local checkpoint, or
    # neither (random weights, with a warning).
    model: str = "ViT-B-32"
    pretrained: str | None = None
    checkpoint: str | None = None
    batch_size: int = 256
    # Image decode/resize processes beside the model (0 = decode in the main process).
    workers: int = 2
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16 (autocast)
    # Where shards are embedded: "driver" (this process, one device) or "spark" (one task per
    # shard on the executors, the GPU from the task's resources on a GPU-scheduled cluster).
    executor: str = "driver"
    # Images with more pixels are refused before decoding (Pillow's own bomb limit by default).
    max_image_pixels: int = 89_478_485
    # Decode JPEGs at reduced size (Pillow draft) when the result still covers the model input.
    draft: bool = True
    # Also embed captions (text_embedding; null when a sample has none).
    text: bool = True
    # Folders of image files are cut into pseudo-shards of this many files (the unit of resume).
    images_per_shard: int = 10000
    # Precomputed embeddings (--npz/--npy): the uid Parquet, row-aligned, and the .npz key.
    uids: str | None = None
    npz_key: str = "l14_img"

    def validate(self, where: str) -> None:
        import re

        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"{where}.workers: must be >= 0, got {self.workers}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"{where}.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"{where}.precision: {self.precision!r} is not one of auto, fp32, fp16, bf16")
        if self.executor not in ("driver", "spark"):
            raise ConfigError(f"{where}.executor: {self.executor!r} is not one of driver, spark")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ConfigError(f"{where}: give either pretrained (an open_clip tag) or checkpoint (a file), not both")
        if self.max_image_pixels < 1:
            raise ConfigError(f"{where}.max_image_pixels: must be >= 1, got {self.max_image_pixels}")
        if self.images_per_shard < 1:
            raise ConfigError(f"{where}.images_per_shard: must be >= 1, got {self.images_per_shard}")


@dataclass(frozen=True)
class ClusterConfig:
    # Owned by the cluster stage (pipeline/cluster.py).
    k: int = 100
    # Cosine k-means (unit-normalised rows and centroids); distance = 1 - cos. Off: squared L2.
    spherical: bool = True
    # FAISS trains on at most k x sample_per_centroid points (its max_points_per_centroid).
    sample_per_centroid: int = 256
    niter: int = 20
    # Nearest clusters recorded per row (top_clusters, top_distances) for multi-label analysis.
    top_m: int = 3
    embedding_col: str = "image_embedding"
    # Embedding dimension; None = the most common length in the input (others are invalid rows).
    dim: int | None = None

    def validate(self, where: str) -> None:
        for name in ("k", "sample_per_centroid", "niter", "top_m"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"{where}.dim: must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class PruneConfig:
    # Owned by the prune stage (pipeline/prune.py); every step is optional (None = off).
    # SemDeDup: drop a member whose max cosine similarity to earlier members exceeds 1 - eps.
    dedup_eps: float | None = None
    # DBP: keep this fraction of SemDeDup's survivors, spread by cluster complexity.
    keep_fraction: float | None = None
    temperature: float = 0.5
    inter_k: int = 20
    floor_ratio: float = 0.0
    # Cluster balancing: keep at most this many members per cluster (the farthest).
    max_per_cluster: int | None = None
    # SemDeDup similarity blocks: block_size x block_size float32 per matmul.
    block_size: int = 4096
    # A previous prune's similarity table (a run, a prune folder or the table): re-threshold it
    # with dedup_eps instead of recomputing similarities.
    similarity: str | None = None

    def validate(self, where: str) -> None:
        if self.dedup_eps is not None and not 0.0 <= self.dedup_eps < 1.0:
            raise ConfigError(f"{where}.dedup_eps: must be in [0, 1), got {self.dedup_eps}")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise ConfigError(f"{where}.keep_fraction: must be in (0, 1], got {self.keep_fraction}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {self.temperature}")
        if self.inter_k < 1:
            raise ConfigError(f"{where}.inter_k: must be >= 1, got {self.inter_k}")
        if not 0.0 <= self.floor_ratio <= 1.0:
            raise ConfigError(f"{where}.floor_ratio: must be in [0, 1], got {self.floor_ratio}")
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise ConfigError(f"{where}.max_per_cluster: must be >= 1, got {self.max_per_cluster}")
        if self.block_size < 1:
            raise ConfigError(f"{where}.block_size: must be >= 1, got {self.block_size}")
        if self.similarity is not None and self.dedup_eps is None:
            raise ConfigError(f"{where}.similarity: re-thresholding a similarity table needs dedup_eps")


@dataclass(frozen=True)
class DemoConfig:
    rows: int = 5000
    concepts: int = 300
    zipf_exponent: float = 1.1
    image_size: int = 64
    near_duplicate_fraction: float = 0.05
    malformed_fraction: float = 0.02

    def validate(self, where: str) -> None:
        if self.rows < 10:
            raise ConfigError(f"{where}.rows: must be >= 10, got {self.rows}")
        if not 2 <= self.concepts:
            raise ConfigError(f"{where}.concepts: must be >= 2, got {self.concepts}")
        if self.zipf_exponent <= 0:
            raise ConfigError(f"{where}.zipf_exponent: must be > 0, got {self.zipf_exponent}")
        for name in ("near_duplicate_fraction", "malformed_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"{where}.{name}: must be in [0, 0.5), got {value}")
        if self.image_size < 8:
            raise ConfigError(f"{where}.image_size: must be >= 8, got {self.image_size}")


# Pipeline order: each stage reads the output of the nearest earlier one it needs.
STAGES = ("ingest", "match", "count", "balance", "download", "embed", "cluster", "prune", "report")
TEXT_STAGES = ("ingest", "match", "count", "balance", "report")


@dataclass(frozen=True)
class RunConfig:
    """`curate run`: the pool, the run folder and the stages to run (in pipeline order)."""

    input: str | None = None
    output: str | None = None
    stages: tuple[str, ...] = TEXT_STAGES

    def validate(self, where: str) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"{where}.stages: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"{where}.stages: a stage is listed twice: {', '.join(self.stages)}")
        if not self.stages:
            raise ConfigError(f"{where}.stages: empty; list at least one of {', '.join(STAGES)}")


@dataclass(frozen=True)
class PipelineConfig:
    seed: int = 0
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    count: CountConfig = field(default_factory=CountConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, where: str = "config") -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f"{where}.{f.name}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["spark"]["explicit"]  # how the config was written, not a setting (see SparkConfig)
        return data


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, allowing int where float is asked; return it."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {hint}, got {type(value).__name__} {value!r}")
    if origin is tuple:
        item_t = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_check_type(v, item_t, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _check_type(k, key_t, f"{where}.{k}"): _check_type(v, val_t, f"{where}.{k}")
            for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got bool {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}".splitlines()[0]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config.{dotted}: {part} is not a section")
        node[leaf] = value
    cfg = from_mapping(PipelineConfig, data, "config")
    cfg.validate()
    stated = data.get("spark") or {}
    return dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, explicit=frozenset(stated)))

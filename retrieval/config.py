"""All configuration, in one place: environment variables prefixed ``COLQWEN_``.

Nothing else in the code base reads ``os.environ``. CLI flags and tests override
fields by building a new ``Settings`` (``settings.model_copy(update=...)``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.types import Datatype, FirstStage

ModelFamily = str  # a key of retrieval.models.FAMILIES


class Settings(BaseSettings):
    """Service settings. Every field maps to ``COLQWEN_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="COLQWEN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- model -----------------------------------------------------------------------------
    model: str = Field(
        "vidore/colqwen2-v1.0",
        description="Hub id or local directory of a checkpoint of any supported family (model "
        "or PEFT adapter); `colqwen models` lists the families.",
    )
    model_family: ModelFamily = Field(
        "auto",
        description="colpali-engine model family (colqwen2, colqwen2_5, colqwen3, colqwen3_5, "
        "colpali, colgemma3, colidefics3, colmodernvbert); auto = what the checkpoint's config "
        "(or an adapter's base, or the hub name) says.",
    )
    device: str = Field(
        "auto",
        description="auto (every visible GPU, else mps, else cpu), cpu, cuda, cuda:N, mps, or "
        "several GPUs: cuda:0,cuda:1 (ingestion runs data-parallel over them).",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the model's blocks: forward passes ~1.4x faster after a "
        "warm-up once a process (tens of seconds; less with compile_cache filled); auto = on "
        "CUDA. Ingestion starts at once on the eager model meanwhile (compile_handover).",
    )
    compile_handover: bool = Field(
        True,
        description="Ingest on the eager model while a second process per device compiles, and "
        "hand each device over to it once warmed up (needs encoder_processes and GPU memory "
        "for two copies of the model for that while); false = compile before the first page.",
    )
    compile_min_pages: int = Field(
        1500,
        ge=0,
        description="`colqwen ingest` of fewer pages than this does not compile: the eager "
        "model finishes them before a compiled one would be ready (the worker always compiles).",
    )
    compile_cache: Path | None = Field(
        None,
        description="Folder of compiled kernels kept between processes and machines (PyTorch's "
        "portable compile cache, a file per model, GPU and torch version): a fresh worker "
        "loads them instead of compiling again. Default: data_dir/compile-cache; put it on a "
        "volume the workers share.",
    )
    fp8: bool = Field(
        False,
        description="Run the model's vision blocks and decoder layers with float8 matmuls "
        "(GPUs of compute capability 8.9+, e.g. H100): a faster forward pass, embeddings close "
        "to bf16's but not equal (BENCHMARKS.md); check retrieval on your data first.",
    )
    encoder_processes: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Ingest with the model in a process of its own per device, so that no "
        "device waits for the GIL behind the rest of ingestion; auto = on GPUs.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 elsewhere."
    )
    max_visual_tokens: int = Field(
        768,
        ge=4,
        le=16384,
        description="Visual-token budget per page (the model was trained at 768).",
    )
    batch_size: int = Field(8, ge=1, description="Pages per forward pass (halved on CUDA OOM).")
    query_batch_size: int = Field(32, ge=1, description="Queries per forward pass.")
    max_loaded_models: int = Field(
        2,
        ge=1,
        description="Models the API keeps loaded: the configured one, plus the models of "
        "other collections, loaded when a search first needs them (least recently used goes).",
    )

    # --- rendering -------------------------------------------------------------------------
    render_workers: int | None = Field(
        None, ge=0, description="Render processes (default: CPU count; 0 = in-process)."
    )
    render_supersample: int = Field(
        1, ge=1, le=4, description="Render at k x the target size, then downsample (1 = off)."
    )
    ocr: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Read pages by OCR (Tesseract), for the text and hybrid modes and snippets: "
        "auto = pages without a text layer (scans, photos, images), when Tesseract is "
        "installed; on = every page (needs Tesseract); off.",
    )
    ocr_languages: str = Field(
        "eng", description="Tesseract languages to read: eng, or eng+deu (their data installed)."
    )

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Where the embedded store and uploads live.")
    qdrant_url: str | None = Field(
        None, description="Qdrant server/cluster URL; unset = embedded store under data_dir."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server.")
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host/db) for the job queue and "
        "the uploaded originals, shared by API replicas and workers on any hosts; unset = "
        "SQLite and files under data_dir (one host). Needs secret_key.",
    )
    qdrant_prefer_grpc: bool = Field(True, description="Talk gRPC to the Qdrant server.")
    qdrant_shard_number: int | None = Field(
        None, ge=1, description="Shards of a new collection on a cluster (server default if unset)."
    )
    qdrant_replication_factor: int | None = Field(
        None, ge=1, description="Copies of each shard on a cluster (server default if unset)."
    )
    qdrant_write_consistency_factor: int | None = Field(
        None, ge=1, description="Replicas that must acknowledge a write (server default if unset)."
    )
    collection: str = Field("pages", description="Default collection name.")
    original_dtype: Datatype = Field(
        "float16",
        description="Storage of the full multivectors of new collections: float16 (any Qdrant), "
        "turbo16 (same disk, more exact), turbo8 (half the disk, scores within ~1e-2, reranks no "
        "faster), both on a Qdrant with TurboQuant datatypes; float32 (twice the disk).",
    )
    first_stage: FirstStage = Field(
        "fde",
        description="How new collections find candidates: fde (one MUVERA vector a page, HNSW "
        "over binary codes; builds in seconds) or rows (HNSW over the row-pooled multivectors, "
        "as collections made before FDEs; builds for an hour at 50k pages).",
    )
    pooling: str = Field(
        "clusters",
        description="Pooled vectors of new collections: clusters (k-means centroids of a page's "
        "tokens, up to 64), buckets (SimHash groups of similar tokens), rows, cols, a "
        "comma-separated mix, or none. With the fde first stage the "
        "first of them reranks its candidates before the full multivectors do.",
    )
    pooled_dtype: Datatype = Field(
        "turbo8",
        description="Storage of the pooled vectors of new fde collections: turbo8 (a byte an "
        "element; needs a Qdrant with TurboQuant datatypes) or float16 (any Qdrant, 8 KB more "
        "a page).",
    )
    hnsw_m: int = Field(
        16, ge=4, le=128, description="HNSW graph degree of the first stage (new collections)."
    )
    hnsw_ef_construct: int = Field(
        100,
        ge=4,
        le=1000,
        description="HNSW build beam of the first stage (new collections): lower builds the "
        "index faster at some first-stage recall (see BENCHMARKS.md).",
    )

    # --- search ----------------------------------------------------------------------------
    prefetch: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Candidates the full multivectors rerank (the last stage of two_stage); "
        "unset = what the collection's middle stage was tuned for (60 with clusters, 150 with "
        "buckets).",
    )
    first_stage_limit: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="FDE candidates the pooled vectors narrow to `prefetch` (fde collections "
        "with pooled vectors); unset = tuned for the middle stage (400 with clusters, 800 with "
        "buckets).",
    )
    fde_oversampling: float | None = Field(
        None,
        ge=0.0,
        le=64.0,
        description="The FDE graph search fetches this many times its candidates by binary "
        "codes, then rescores them with the stored FDEs; 0 = no rescoring (the codes' own "
        "ranking, no FDE read from disk); unset = tuned for the middle stage (2).",
    )

    # --- service ---------------------------------------------------------------------------
    api_keys: str | None = Field(
        None, description="Comma-separated API keys; when set, every endpoint but health needs one."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS ('*' = any)."
    )
    public_docs: bool = Field(
        False,
        description="With API keys set, serve the OpenAPI schema (/openapi.json, which /docs "
        "shows) without a key.",
    )
    max_upload_mb: int = Field(200, ge=1, description="Largest accepted upload, in MB.")
    upload_idle_s: float = Field(
        30.0,
        gt=0,
        description="Seconds an upload's body may send nothing before it is refused (408).",
    )
    upload_min_kb_s: float = Field(
        4.0,
        ge=0,
        description="KB/s an upload's body must average once it has run for upload_idle_s "
        "(408 below; 0 = no minimum).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key that seals the passwords of encrypted PDFs at rest (a Fernet key: "
        "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'`). "
        "Unset: a key is generated in data_dir/secret.key (mode 0600) on first use; with "
        "database_url set it must be set, the same on every host.",
    )
    max_pages: int = Field(5000, ge=1, description="Most pages a document may have.")
    job_lease_s: float = Field(
        60.0, gt=0, description="A running job whose worker stops renewing this lease is resumed."
    )
    query_batch_wait_ms: float = Field(
        5.0, ge=0, description="How long the API collects concurrent queries into one forward pass."
    )
    query_batching: bool = Field(True, description="Batch concurrent queries (see above).")
    max_pending_queries: int = Field(
        256, ge=1, description="Queries waiting for the model beyond this get HTTP 429."
    )
    fidelity_sample: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of API searches (two_stage, pooled) re-run in exact mode in the "
        "background to measure recall@10 of the served mode against exact MaxSim "
        "(colqwen_fidelity_recall_at_10 on /metrics); 0 = off.",
    )

    @property
    def compile_cache_dir(self) -> Path:
        return self.compile_cache or self.data_dir / "compile-cache"

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @field_validator("model_family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from retrieval.models import FAMILIES

        if value != "auto" and value not in FAMILIES:
            raise ValueError(f"model_family must be auto or one of {', '.join(sorted(FAMILIES))}")
        return value

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        known = ("rows", "cols", "buckets", "clusters")
        if parts != ["none"] and (not parts or any(p not in known for p in parts)):
            raise ValueError(
                "pooling must be 'none' or a comma-separated mix of " + ", ".join(known)
            )
        return ",".join(parts)

    @property
    def pooling_vectors(self) -> tuple[str, ...]:
        """The pooled vectors new collections store: () for none."""
        return () if self.pooling == "none" else tuple(self.pooling.split(","))

    @field_validator("fde_oversampling")
    @classmethod
    def _oversampling_is_0_or_at_least_1(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < 1:
            raise ValueError("fde_oversampling must be 0 (no rescoring) or at least 1")
        return value

    @field_validator("qdrant_url", "database_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


__all__ = ["ModelFamily", "Settings", "get_settings"]

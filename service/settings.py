"""Service settings: one pydantic-settings class, environment prefix `REFIT_`, read once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import validate_model_name
from models.backbones import SHIPPED, default_backbone_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REFIT_", extra="ignore")

    home: Path = Field(Path(".refit"), description="registry root, job store and caches")
    model_name: str = Field("default", description="the model this service serves and retrains")
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(3000, ge=1, le=65535, description="HTTP port")
    workers: int = Field(2, ge=1, le=64, description="inference worker processes")
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per worker")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="cuda: require the CUDA provider (not ready without it); auto: use it when present",
    )
    max_batch_texts: int = Field(
        64, ge=1, le=4096, description="texts merged into one onnxruntime call"
    )
    max_latency_ms: float = Field(
        5.0, ge=0, le=1000, description="how long a batch waits for more requests"
    )
    inline_max_chars: int = Field(
        0,
        ge=0,
        description="a batch that is one request of at most this many characters is scored"
        " on the event loop, without the thread hop (~0.1-0.5 ms of a lone request); the"
        " loop waits for that graph run; 0: every batch goes through the batcher's thread",
    )
    max_texts_per_request: int = Field(256, ge=1, description="texts per /predict call")
    max_text_chars: int = Field(10_000, ge=1, description="characters per text")
    max_examples_per_request: int = Field(100_000, ge=2, description="examples per retrain request")
    max_classes: int = Field(1000, ge=2, description="distinct labels per model")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="request body size limit (413 beyond)"
    )
    max_top_k: int = Field(100, ge=1, description="largest top_k accepted")
    batch_root: Path | None = Field(
        None,
        description="the folder `POST /models/{name}/batch` reads inputs from and writes"
        " results to (paths are relative to it; nothing outside it); unset: off",
    )
    backbones: Annotated[dict[str, Path | None], NoDecode] = Field(
        default_factory=dict,
        description="encoders a model may use besides `minilm` (the packaged MiniLM, always"
        " allowed): shipped names installed with `refit backbones install` (`mpnet`), comma"
        ' separated, and/or JSON {"NAME": "/local/hf/folder"} (null: the installed shipped one)',
    )
    backbone_dir: Path = Field(
        default_factory=default_backbone_dir,
        description="where `refit backbones install` puts shipped encoders"
        " (default: ~/.local/share/refit/backbones)",
    )
    backbone: str = Field(
        "minilm",
        min_length=1,
        max_length=100,
        description="the encoder new versions use (a name above), or `auto`: the cheapest"
        " allowed one unless another is better beyond noise and fits REFIT_MAX_P50_MS",
    )
    max_p50_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="backbone auto: the largest single-text p50 latency (ms, one thread, the"
        " serving graph) a model may have; unset: no budget",
    )
    max_loaded_models: int = Field(
        4,
        ge=1,
        le=256,
        description="models a worker keeps loaded (the default one included); the least"
        " recently used idle one is unloaded beyond this",
    )
    api_token: SecretStr | None = Field(
        None, description="when set, retrain/promote/rollback need `Authorization: Bearer <token>`"
    )
    api_tokens_file: Path | None = Field(
        None,
        description="more tokens, one `<predict|label|admin> <sha256 hex of the token>` per"
        " line (`refit token`), re-read within a second of a change",
    )
    predict_auth: bool = Field(
        False, description="/predict and V2 inference need a token of scope predict or above"
    )
    promotion_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="challenger may be this much worse in macro-F1 and still be promoted",
    )
    swap_poll_s: float = Field(
        1.0, gt=0, le=60, description="how often workers look for a new production version"
    )
    trainer_threads: int = Field(1, ge=1, le=64, description="torch threads of the trainer process")
    feature_extraction_below: int = Field(
        16, ge=2, description="policy: k below this -> feature extraction"
    )
    fine_tuning_at: int = Field(64, ge=2, description="policy: k at or above this -> fine-tuning")
    time_budget_s: float = Field(1800, gt=0, description="policy: fine-tuning time budget per job")
    fine_tuning_min_steps: int = Field(
        300,
        ge=0,
        le=100000,
        description="policy: optimizer steps fine-tuning takes at least on small data "
        "(more epochs, up to 40)",
    )
    contrastive_steps: int = Field(
        0,
        ge=0,
        le=10000,
        description="policy: with few labels and a weak probe, adapt the encoder by this many "
        "steps of contrastive fine-tuning (80 is a good value) when a cross-fitted estimate"
        " favours it, instead of LP-FT (0, the default: LP-FT)",
    )
    default_data: Path | None = Field(
        None,
        description="CSV to train the first model from when the registry is empty (default: shipped examples)",
    )
    store_busy_timeout_s: float = Field(
        30, gt=0, le=600, description="how long a write waits for another SQLite writer"
    )
    auto_retrain: bool = Field(
        True, description="start retrain jobs by themselves when a trigger fires"
    )
    retrain_min_pending: int = Field(
        200, ge=0, description="trigger (a): this many new labeled examples (0: off)"
    )
    retrain_interval_s: float = Field(
        0, ge=0, description="trigger (b): this long since the last retrain, with new data (0: off)"
    )
    drift_threshold: float = Field(
        0.2, ge=0, le=1, description="trigger (c): label JS divergence, with new data (0: off)"
    )
    drift_min_predictions: int = Field(
        200, ge=1, description="live predictions before the drift signal counts"
    )
    retrain_backoff_s: float = Field(
        600, ge=0, description="wait after a failed automatic job; doubles per failure in a row"
    )
    trigger_poll_s: float = Field(
        5.0, gt=0, le=3600, description="how often workers flush traffic stats and check triggers"
    )
    out_of_scope: Literal["auto", "off"] = Field(
        "auto", description="new versions answer out of scope (auto: a detector is chosen)"
    )
    out_of_scope_label: str = Field(
        "out_of_scope",
        min_length=1,
        max_length=100,
        description="the label of examples that belong to no class, and of the answer",
    )
    out_of_scope_target_recall: float = Field(
        0.95, ge=0.5, le=0.999, description="in-scope texts the detector must keep (no examples)"
    )
    store_texts: bool = Field(
        False,
        description="put served texts worth a label (uncertain, out of scope, shadow"
        " disagreements) in the labeling queue: personal data, kept REFIT_QUEUE_RETENTION_S",
    )
    query_strategy: Literal["margin", "entropy", "diverse"] = Field(
        "margin", description="how the labeling queue ranks items (service/ranking.py)"
    )
    queue_retention_s: float = Field(
        7 * 86_400,
        ge=60,
        le=366 * 86_400,
        description="served texts leave the labeling queue (and the store) after this long",
    )
    uncertain_below: float = Field(
        0.5, ge=0, le=1, description="top-1 score under which an input counts as uncertain"
    )
    store_uncertain_texts: bool = Field(
        False, description="keep the text of uncertain inputs for labeling (off: a hash only)"
    )
    log_texts: bool = Field(
        False, description="log request texts (off: texts never reach the logs)"
    )
    graceful_shutdown_s: int = Field(
        30, ge=0, description="drain time for in-flight requests on SIGTERM"
    )
    prediction_window: int = Field(
        100_000,
        ge=0,
        description="served predictions kept for feedback to link to by prediction_id (0: none)",
    )
    trace_predict: bool = Field(
        False,
        description="OpenTelemetry spans for /predict (BentoML's tracing; off: ~10% of the"
        " request path for spans nobody exports unless a tracing exporter is configured)",
    )
    access_log: bool = Field(True, description="BentoML's access log line per request")
    quantize: Literal["auto", "always", "never"] = Field(
        "auto",
        description="int8 graph per version for CPU serving: auto = served when it agrees"
        " with fp32 on >= 99% of the training-time texts (training/quantization.py); always;"
        " never (fp32 served, none built)",
    )
    fp16: Literal["auto", "always", "never"] = Field(
        "auto",
        description="fp16 graph per version for CUDA serving: auto = built where training sees"
        " a GPU; always = built anywhere; never. Served on CUDA when it passes its parity"
        " and agreement gate",
    )
    promote_via_shadow: bool = Field(
        False,
        description="promote=auto (and triggered retrains) put a challenger that passed the"
        " offline gate in shadow first instead of promoting it",
    )
    shadow_fraction: float = Field(
        0.1, ge=0, le=1, description="share of live requests the shadow version also scores"
    )
    shadow_min_labeled: int = Field(
        200,
        ge=1,
        description="linked feedback examples (scored by both) before the shadow is promoted"
        " (not worse than production) or dropped",
    )
    canary_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of callers a canary version answers (sticky per"
        " X-Refit-Route-Key, random per request without one)",
    )
    canary_min_labeled: int = Field(
        200,
        ge=1,
        description="linked feedback examples on the canary's own answers before it is"
        " promoted or rolled back by the rule in service/canary.py",
    )
    canary_latency_factor: float = Field(
        1.5,
        ge=1,
        le=100,
        description="a canary whose p99 latency is above this times production's (+5 ms) is"
        " rolled back instead of promoted",
    )
    request_timeout_s: float = Field(
        20,
        ge=0,
        le=3600,
        description="every request is answered within this (408 for a body still arriving,"
        " 503 otherwise); keep it below REFIT_GRACEFUL_SHUTDOWN_S; 0: no deadline",
    )
    # -- scale-out (docs: README "Scale out") ---------------------------------------------
    database_url: str | None = Field(
        None,
        description="sqlite:///PATH (default: $REFIT_HOME/refit.sqlite) or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB shared by every replica and worker",
    )
    registry_url: str | None = Field(
        None,
        description="model registry: a folder (default: $REFIT_HOME) or s3://BUCKET/PREFIX",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (default: AWS); credentials from AWS_* variables"
    )
    cache_dir: Path | None = Field(
        None, description="where a replica caches versions of a remote registry ($REFIT_HOME/cache)"
    )
    trainer: Literal["embedded", "external"] = Field(
        "embedded",
        description="embedded: the service runs its own trainer processes; external: "
        "`refit worker` processes claim the jobs and the service only queues them",
    )
    worker_heartbeat_s: float = Field(
        2.0, gt=0, le=60, description="how often a worker renews its hold on a running job"
    )
    worker_timeout_s: float = Field(
        30.0, gt=0, description="a running job whose worker is silent this long is interrupted"
    )
    worker_forget_s: float = Field(
        3600.0,
        ge=60,
        description="a worker row silent this long is deleted (its heartbeat gauge goes"
        " away, so the stale-heartbeat alert clears)",
    )
    keep_versions: int = Field(
        0,
        ge=0,
        le=10_000,
        description="per model, the newest versions kept; older ones are deleted (never an"
        " aliased one: production, previous, shadow, canary); 0: keep all",
    )
    job_retries: int = Field(
        1, ge=0, le=10, description="automatic retries of a job whose worker stopped"
    )
    worker_poll_s: float = Field(
        1.0, gt=0, le=60, description="how often idle workers look for jobs"
    )

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_model_name(value)

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbones(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: JSON, or shipped names
            text = value.strip()
            if text.startswith("{"):
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"REFIT_BACKBONES is not valid JSON: {exc}") from None
            else:
                value = {name.strip(): None for name in text.split(",") if name.strip()}
        if isinstance(value, dict):
            for name, folder in value.items():
                validate_model_name(name)
                if name in ("minilm", "auto"):
                    raise ValueError(f"REFIT_BACKBONES: {name!r} is built in; do not list it")
                if folder is None and name not in SHIPPED:
                    raise ValueError(
                        f"REFIT_BACKBONES: {name!r} is not a shipped backbone "
                        f"({', '.join(n for n in SHIPPED if n != 'minilm')}); give its folder:"
                        f' {{"{name}": "/local/hf/folder"}}'
                    )
        return value

    @model_validator(mode="after")
    def _known_backbone(self) -> Settings:
        if self.backbone not in self.allowed_backbones and self.backbone != "auto":
            raise ValueError(
                f"REFIT_BACKBONE {self.backbone!r} is not allowed; allowed: "
                f"{', '.join(self.allowed_backbones)} or auto (REFIT_BACKBONES adds encoders)"
            )
        return self

    @property
    def allowed_backbones(self) -> list[str]:
        return ["minilm", *sorted(self.backbones)]

    def backbone_folder(self, name: str) -> Path | None:
        """The local folder of an allowed backbone; None for the packaged MiniLM."""
        if name == "minilm":
            return None
        folder = self.backbones[name]
        return folder if folder is not None else self.backbone_dir / SHIPPED[name].folder

    @field_validator("api_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("REFIT_API_TOKEN must be at least 8 characters (or unset)")
        return value

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> Settings:
        if self.fine_tuning_at < self.feature_extraction_below:
            raise ValueError(
                f"REFIT_FINE_TUNING_AT ({self.fine_tuning_at}) must be >= "
                f"REFIT_FEATURE_EXTRACTION_BELOW ({self.feature_extraction_below})"
            )
        return self

    @property
    def root(self) -> Path:
        return self.home.resolve()

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        if value and "://" in value and not value.startswith("s3://"):
            raise ValueError("REFIT_REGISTRY_URL must be a folder or s3://BUCKET/PREFIX")
        return value or None

    @property
    def store_path(self) -> Path:
        return self.root / "refit.sqlite"

    @property
    def database(self) -> str | Path:
        """What `Store` opens: REFIT_DATABASE_URL, else the SQLite file in REFIT_HOME."""
        return self.database_url or self.store_path

    @property
    def registry_root(self) -> Path:
        """Local registry folder (REFIT_REGISTRY_URL as a path), else REFIT_HOME."""
        if self.registry_url and not self.registry_url.startswith("s3://"):
            return Path(self.registry_url).resolve()
        return self.root

    @property
    def version_cache(self) -> Path:
        return (self.cache_dir or self.root / "cache").resolve()

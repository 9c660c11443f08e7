"""One `Settings` object, read from `TREELORA_*` environment variables (see the README's table).

The defaults are the embedded mode: SQLite, a local folder as object store and a filesystem
broker, all under `data_dir`, so one command on a fresh machine runs the whole service.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Choices are checked when the settings are read, so a typo fails at start-up, not mid-request.
Store = Literal["local", "s3"]  # a folder, or S3 (or any S3-compatible server)
Device = Literal["auto", "cpu", "cuda"]  # auto: cuda when available
Routing = Literal["flat", "tree"]  # task="auto": the router's best task, or descend the tree
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?")  # a browser's Origin header
MIN_ADMIN_KEY = 32


def env_value(value: object) -> str:
    """A setting as its environment variable spells it: a secret in clear, a list (`cors_origins`)
    comma-separated, as the setting reads it back."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TREELORA_", extra="ignore")

    host: str = "127.0.0.1"  # where `python -m api.serve` listens
    port: int = Field(default=8000, gt=0, lt=65536)
    data_dir: Path = Path("var")  # embedded mode: database, blobs and broker folders live here
    database_url: str = ""  # default: sqlite under data_dir
    broker_url: str = ""  # default: kombu's filesystem transport under data_dir; e.g. redis://host:6379/0
    store: Store = "local"
    store_dir: Path | None = None  # local store folder (default data_dir/objects)
    s3_endpoint: str | None = None  # e.g. http://minio:9000; None = AWS
    s3_bucket: str = "treelora"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_prefix: str = ""  # key prefix inside the bucket

    device: Device = "auto"  # where workers train and the API predicts
    # torch's CPU threads per process (the API's serving, a worker's training); None: torch's default,
    # one per core. Pin it where the API and a worker, or other work, share a machine's cores.
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    models: str = ""  # extra base models a stream may name: "name=/path/or/hf-id,other=..."
    default_model: str = "smollm2-135m-instruct"

    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)  # per uploaded file
    # any request body but a task upload (which gets two files' worth): counted as it arrives
    max_json_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    max_records: int = Field(default=50_000, gt=0)  # examples per uploaded file
    max_field_chars: int = Field(default=20_000, gt=0)  # one prompt or completion
    max_eval_examples: int = Field(default=100, gt=0)  # scored per task after each job
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # eval split cut from train when none is given
    max_predict_inputs: int = Field(default=64, gt=0)
    max_new_tokens_limit: int = Field(default=256, gt=0, le=4096)  # 4096: the predict schema's ceiling
    max_score_choices: int = Field(default=32, gt=0)  # choices per /score request
    max_choice_chars: int = Field(default=1000, gt=0)  # one /score choice

    lease_s: float = Field(default=60.0, gt=0)  # a running job's lease; a worker renews it
    heartbeat_s: float = Field(default=2.0, gt=0)  # lease renewal, progress flush, cancel check
    requeue_after_s: float = Field(default=120.0, gt=0)  # a queued job not picked up is sent again
    job_time_limit_s: float = Field(default=4 * 3600.0, gt=0)  # one attempt of a job runs this long at most
    learner_cache: int = Field(default=1, ge=1)  # full learners kept for PEFT export
    batch_window_ms: float = Field(default=20.0, ge=0)  # a batch closes after this long with no new request
    batch_max_wait_ms: float = Field(default=100.0, ge=0)  # ... or this long after its first request
    max_batch: int = Field(default=32, gt=0)  # rows (inputs) per batch at most
    # "step": rows join and leave the running batch between decoding steps (continuous batching);
    # "request": a batch is formed from the requests that arrived together and runs to its longest answer
    batching: Literal["step", "request"] = "step"
    # step-level only: prompt tokens prefilled between two decoding steps at most (0: no limit), so that
    # requests arriving do not stretch the steps of the rows already decoding
    prefill_tokens_per_step: int = Field(default=0, ge=0)
    adapter_cache_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # node adapters kept in memory
    # below it, auto routing says so (`low_confidence`); None: the stream's router's calibrated threshold
    route_min_confidence: float | None = Field(default=None, ge=0, le=1)
    routing: Routing = "flat"  # for task="auto" when a request does not choose
    # blobs written or put within this many seconds are never deleted (stream deletion, `python -m api.gc`):
    # an upload or a job's commit writes its blobs before the rows that name them
    blob_grace_s: float = Field(default=3600.0, ge=0, le=365 * 86400, allow_inf_nan=False)

    # API keys (docs/security.md): with `auth` on, every request but the health checks, the static
    # files and (when public) the docs and metrics needs `Authorization: Bearer <key>`; the admin
    # key creates and revokes the others and sees every stream. Off: every request acts as the admin
    # (the embedded mode's default, loudly logged at start-up; production turns it on).
    auth: bool = False
    admin_key: SecretStr | None = None  # at least 32 characters; required when auth is on
    public_docs: bool = True  # /docs, /redoc and /openapi.json without a key (they hold no data)
    public_metrics: bool = False  # /metrics without a key (service-wide counts, no names or ids)
    # CORS: the origins (scheme://host[:port]) whose pages may call the API; none by default, so a
    # browser page of any other origin can read nothing and is refused writes
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """`TREELORA_CORS_ORIGINS` as a comma-separated list."""
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not ORIGIN.fullmatch(origin):
                raise ValueError(f"cors_origins: {origin!r} is not scheme://host[:port] (no '*', no path)")
        return [o.rstrip("/") for o in value]

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        key = self.admin_key.get_secret_value() if self.admin_key is not None else None
        if key is not None and (len(key) < MIN_ADMIN_KEY or not key.isascii() or not key.isprintable()):
            raise ValueError(f"admin_key must be at least {MIN_ADMIN_KEY} printable ASCII characters")
        if self.auth and key is None:
            raise ValueError("auth is on but no admin_key is set: set TREELORA_ADMIN_KEY")
        return self

    def to_env(self) -> dict[str, str]:
        """The `TREELORA_*` variables that make another process (a worker, a test's server) read
        these settings."""
        return {f"TREELORA_{k.upper()}": env_value(v) for k, v in self.model_dump().items() if v is not None}

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'treelora.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def objects_dir(self) -> Path:
        return self.store_dir or self.data_dir / "objects"

    def model_choices(self) -> dict[str, str | None]:
        """Base models a stream may use: name -> path or hub id (None = the packaged default)."""
        out: dict[str, str | None] = {self.default_model: None}
        for item in filter(None, (s.strip() for s in self.models.split(","))):
            name, _, where = item.partition("=")
            out[name.strip()] = where.strip() or name.strip()
        return out


@lru_cache
def get_settings() -> Settings:
    return Settings()

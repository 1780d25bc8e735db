"""The platform spec as pydantic models: the one description of a federation.

Every model forbids unknown keys so that a misspelt key is an error with a
suggestion, never a silently ignored setting. Values are plain data: no model
here opens a connection or reads a file.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skyfed.spec.secrets import SecretRef

NAME = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME, description="lower_snake_case identifier")]

COMPATIBILITY_MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
Compatibility = Literal[
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"
]
Severity = Literal["warn", "quarantine", "fail"]

# Canonical column types. decimal(p,s) carries its precision and scale.
SIMPLE_TYPES = ("string", "int32", "int64", "double", "bool", "date", "timestamp", "timestamptz")
_DECIMAL = re.compile(r"^decimal\((\d{1,2}),\s*(\d{1,2})\)$")


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


# --------------------------------------------------------------------------- sources


class PostgresSource(SpecModel):
    """A PostgreSQL database (Cloud SQL on Google Cloud)."""

    kind: Literal["postgres"]
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    database: str
    user: str
    password: SecretRef | None = None
    schema_: str = Field("public", alias="schema")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    description: str | None = None


class BigQuerySource(SpecModel):
    """A BigQuery dataset read through the official client."""

    kind: Literal["bigquery"]
    project: str
    dataset: str
    location: str
    endpoint: str | None = Field(None, description="API endpoint; empty means Google's (set for the emulator)")
    credentials_json: SecretRef | None = None
    description: str | None = None


FileFormat = Literal["csv", "jsonl", "parquet", "avro"]


class FileTable(SpecModel):
    """A logical table made of the objects that match a glob pattern."""

    pattern: str = Field(description="glob below the source's bucket/prefix or folder, e.g. flights/dt=*/*.csv")
    format: FileFormat
    hive_partitioning: bool = False
    options: dict[str, str | int | float | bool] = Field(default_factory=dict, description="reader options")


class GcsSource(SpecModel):
    """Files in a Cloud Storage bucket, or a local folder with `path`."""

    kind: Literal["gcs"]
    bucket: str | None = None
    prefix: str = ""
    path: str | None = Field(None, description="local folder instead of a bucket")
    endpoint: str | None = None
    credentials_json: SecretRef | None = None
    tables: dict[Name, FileTable] = Field(default_factory=dict)
    description: str | None = None

    @model_validator(mode="after")
    def _bucket_or_path(self) -> GcsSource:
        if bool(self.bucket) == bool(self.path):
            raise ValueError("a gcs source needs exactly one of 'bucket' (Cloud Storage) or 'path' (local folder)")
        return self


class PubSubSource(SpecModel):
    """A Pub/Sub subscription carrying JSON events."""

    kind: Literal["pubsub"]
    project: str
    topic: str
    subscription: str
    endpoint: str | None = None
    credentials_json: SecretRef | None = None
    description: str | None = None
    max_message_bytes: int = Field(
        65536, ge=1, le=10_000_000, description="larger messages go to the dead-letter store (quarantine) unread"
    )


Source = Annotated[
    Union[PostgresSource, BigQuerySource, GcsSource, PubSubSource],
    Field(discriminator="kind"),
]
SOURCE_KINDS = ("postgres", "bigquery", "gcs", "pubsub")

# --------------------------------------------------------------------------- stores


class IcebergStore(SpecModel):
    """Apache Iceberg tables: data files in the warehouse, catalog in the metadata database."""

    kind: Literal["iceberg"]
    warehouse: str = Field(description="folder or gs://bucket/prefix for data files")


class BigQueryStore(SpecModel):
    """A BigQuery dataset in the region's location."""

    kind: Literal["bigquery"]
    project: str
    dataset: str
    location: str
    endpoint: str | None = None
    credentials_json: SecretRef | None = None


Store = Annotated[Union[IcebergStore, BigQueryStore], Field(discriminator="kind")]

# --------------------------------------------------------------------------- regions


class Region(SpecModel):
    """A residency boundary: one GCP project in one location."""

    project: str
    location: str
    description: str | None = None
    egress_usd_per_gb: dict[Name, float] = Field(
        default_factory=dict, description="price per GB moved from this region to each other region"
    )
    store: Store
    sources: dict[Name, Source] = Field(default_factory=dict)

    @field_validator("egress_usd_per_gb")
    @classmethod
    def _non_negative(cls, prices: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in prices.items() if v < 0]
        if bad:
            raise ValueError(f"egress price must be >= 0 (to {', '.join(bad)})")
        return prices


# --------------------------------------------------------------------------- contracts


class Checks(SpecModel):
    """Quality rules on one column."""

    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    pattern: str | None = None
    references: str | None = Field(None, description="contract.column that must contain the value")
    unique: bool = False

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class Column(SpecModel):
    type: str = Field(description="string, int32, int64, double, decimal(p,s), bool, date, timestamp, timestamptz")
    nullable: bool = True
    description: str | None = None
    classification: str | None = Field(None, description="e.g. pii.name, pii.email, pii.phone, pii.document")
    tags: list[str] = Field(default_factory=list)
    checks: Checks | None = None
    severity: Severity = "quarantine"

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        value = value.strip().lower()
        if value in SIMPLE_TYPES:
            return value
        m = _DECIMAL.match(value)
        if m and 0 < int(m.group(1)) <= 38 and int(m.group(2)) <= int(m.group(1)):
            return f"decimal({m.group(1)},{m.group(2)})"
        raise ValueError(f"unknown type {value!r}; use one of {', '.join(SIMPLE_TYPES)} or decimal(p,s)")


class Contract(SpecModel):
    """A canonical entity: typed columns, keys, quality rules and a version."""

    version: int = Field(ge=1)
    compatibility: Compatibility = "BACKWARD"
    description: str | None = None
    owner: str | None = None
    key: list[str] = Field(default_factory=list)
    partition_by: str | None = Field(None, description="e.g. month(dep_time_utc)")
    columns: dict[Name, Column] = Field(min_length=1)


# --------------------------------------------------------------------------- mappings


class Mapping(SpecModel):
    """How one source table becomes one contract: a SQL expression per contract column."""

    name: Name
    source: str = Field(description="region.source")
    table: str
    contract: Name
    key: list[str] = Field(default_factory=list, description="source columns identifying a record")
    cursor: str | None = Field(None, description="incremental cursor column (updated_at or id)")
    filter: str | None = Field(None, description="SQL predicate over source columns")
    columns: dict[Name, str] = Field(description="contract column -> SQL expression over source columns")


class Reference(SpecModel):
    """A small reference table broadcast to every region."""

    contract: Name
    path: str = Field(description="Parquet file or folder")


# --------------------------------------------------------------------------- the spec


class PlatformSpec(SpecModel):
    """A whole federation."""

    skyfed: Literal[1] = Field(description="spec format version")
    name: Name
    description: str | None = None
    regions: dict[Name, Region] = Field(min_length=1)
    reference: dict[Name, Reference] = Field(default_factory=dict)
    contracts: dict[Name, Contract] = Field(default_factory=dict)
    mappings: list[Mapping] = Field(default_factory=list)

    def source(self, ref: str) -> Source:
        """The source named `region.source`."""
        region, _, name = ref.partition(".")
        return self.regions[region].sources[name]

"""The platform spec: models, loading with precise errors, and its JSON Schema."""

from skyfed.spec.issues import SpecError, SpecIssue
from skyfed.spec.json_schema import spec_json_schema
from skyfed.spec.loader import check_spec, load_spec, resolve_spec_path
from skyfed.spec.models import (
    BigQuerySource,
    BigQueryStore,
    Column,
    Contract,
    GcsSource,
    IcebergStore,
    Mapping,
    PlatformSpec,
    PostgresSource,
    PubSubSource,
    Region,
)
from skyfed.spec.secrets import SecretRef

__all__ = [
    "BigQuerySource",
    "BigQueryStore",
    "Column",
    "Contract",
    "GcsSource",
    "IcebergStore",
    "Mapping",
    "PlatformSpec",
    "PostgresSource",
    "PubSubSource",
    "Region",
    "SecretRef",
    "SpecError",
    "SpecIssue",
    "check_spec",
    "load_spec",
    "resolve_spec_path",
    "spec_json_schema",
]

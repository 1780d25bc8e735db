"""One function from a source spec to its connector."""

from __future__ import annotations

from skyfed.connectors.base import Connector
from skyfed.errors import SkyfedError
from skyfed.spec.models import BigQuerySource, GcsSource, PostgresSource


def connector_for(spec: object, name: str | None = None) -> Connector:
    """The connector for a source spec; `name` ("region.source") appears in its messages.

    Imports are lazy so that reading files does not load the BigQuery client and so on.
    """
    if isinstance(spec, PostgresSource):
        from skyfed.connectors.postgres import PostgresConnector

        return PostgresConnector(spec, name)
    if isinstance(spec, BigQuerySource):
        from skyfed.connectors.bigquery import BigQueryConnector

        return BigQueryConnector(spec, name)
    if isinstance(spec, GcsSource):
        from skyfed.connectors.files import FilesConnector

        return FilesConnector(spec, name)
    kind = getattr(spec, "kind", type(spec).__name__)
    raise SkyfedError(
        f"source kind {kind!r} has no batch connector",
        hint="pubsub sources are read by `skyfed stream`, not by batch ingestion",
    )

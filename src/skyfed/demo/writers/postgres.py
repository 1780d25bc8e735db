"""latam → PostgreSQL (Cloud SQL stand-in) through psycopg 3: drop, create with keys, COPY."""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa
import pyarrow.csv as pacsv

from skyfed.demo.writers.settings import NOT_RUNNING_HINT, PgSettings
from skyfed.errors import SkyfedError

DDL = {
    "voos": """
        id bigint PRIMARY KEY, numero_voo text, origem char(3), destino char(3),
        partida_local timestamp without time zone, chegada_local timestamp without time zone,
        aeronave text, matricula text, assentos integer, passageiros integer, distancia_km integer,
        combustivel_litros numeric(12,1), receita_brl numeric(14,2), custo_brl numeric(14,2),
        atraso_min integer, situacao text, atualizado_em timestamptz NOT NULL""",
    "reservas": """
        id bigint PRIMARY KEY, localizador char(6) NOT NULL, voo_id bigint NOT NULL, nome_passageiro text,
        email text, telefone text, documento text, classe text, tarifa_brl numeric(12,2), situacao text,
        criado_em timestamptz NOT NULL, atualizado_em timestamptz NOT NULL""",
    "pesquisas": """
        id bigint PRIMARY KEY, voo_id bigint NOT NULL, nota smallint, comentario text,
        respondido_em timestamptz NOT NULL""",
}
INDEXES = {
    "voos": ["CREATE INDEX voos_atualizado_em ON voos (atualizado_em)"],
    "reservas": ["CREATE INDEX reservas_localizador ON reservas (localizador)",
                 "CREATE INDEX reservas_atualizado_em ON reservas (atualizado_em)"],
    "pesquisas": [],
}
CHUNK_ROWS = 100_000


def connect(settings: PgSettings, database: str | None = None):
    import psycopg

    try:
        return psycopg.connect(**settings.conninfo(database), autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SkyfedError(
            f"cannot connect to PostgreSQL at {settings.host}:{settings.port} for region latam ({first})",
            NOT_RUNNING_HINT,
        ) from None


def ensure_database(settings: PgSettings) -> None:
    with connect(settings, "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{settings.database}"')


def write(settings: PgSettings, tables: dict[str, pa.Table], advance: Callable[[int], None] | None = None) -> dict[str, int]:
    """Drop and recreate the latam tables and COPY the rows in; returns rows written per table."""
    ensure_database(settings)
    written: dict[str, int] = {}
    with connect(settings) as conn:
        conn.execute(f'SET search_path TO "{settings.schema}"')
        with conn.transaction():
            for name, table in tables.items():
                conn.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
                conn.execute(f'CREATE TABLE "{name}" ({DDL[name]})')
                cols = ", ".join(f'"{c}"' for c in table.column_names)
                with conn.cursor().copy(f'COPY "{name}" ({cols}) FROM STDIN (FORMAT csv)') as copy:
                    for start in range(0, table.num_rows, CHUNK_ROWS):
                        chunk = table.slice(start, CHUNK_ROWS)
                        buf = io.BytesIO()
                        pacsv.write_csv(chunk, buf, pacsv.WriteOptions(include_header=False))
                        copy.write(buf.getvalue())
                        if advance:
                            advance(chunk.num_rows)
                for stmt in INDEXES[name]:
                    conn.execute(stmt)
                written[name] = table.num_rows
        for name in tables:
            conn.execute(f'ANALYZE "{name}"')
    return written


def counts(settings: PgSettings, names: list[str]) -> dict[str, int | None]:
    """count(*) per table, read back through psycopg (None if the table is missing)."""
    out: dict[str, int | None] = {}
    with connect(settings) as conn:
        conn.execute(f'SET search_path TO "{settings.schema}"')
        for name in names:
            exists = conn.execute("SELECT to_regclass(%s)", (f'"{settings.schema}"."{name}"',)).fetchone()[0]
            out[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] if exists else None
    return out

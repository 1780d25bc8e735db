"""DuckDB connections that load their extensions offline.

DuckDB's own INSTALL goes to the network (and fails on a machine without it), so a
connection here never autoinstalls: it keeps a project-local extension directory
under the state folder and installs each extension from the binaries shipped in the
PyPI packages `duckdb-extension-<name>` (pinned with duckdb 1.5.5), then LOADs it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import duckdb

from skyfed.errors import SkyfedError
from skyfed.home import sub_dir

BUILT_IN = frozenset({"parquet", "json", "icu", "core_functions"})
_INSTALL_LOCK = threading.Lock()


def connect(extensions: Iterable[str] = (), database: str = ":memory:", *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with `extensions` loaded from the local packages, never the network."""
    config: dict[str, str | bool | int] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "extension_directory": str(sub_dir("duckdb", "extensions")),
    }
    if threads:
        config["threads"] = threads
    con = duckdb.connect(database, config=config)
    for name in extensions:
        load(con, name)
    return con


def load(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load extension `name` into `con`, installing it from its PyPI package first if needed."""
    if name in BUILT_IN:
        con.execute(f"LOAD {name}")
        return
    try:
        import duckdb_extensions
    except ImportError as exc:  # pragma: no cover - a broken install
        raise SkyfedError(
            "the package duckdb-extensions is not installed, so DuckDB cannot load extensions offline",
            hint="run `make install`",
        ) from exc
    try:
        with _INSTALL_LOCK:  # two threads installing the same file race on the rename
            duckdb_extensions.import_extension(name, con=con)
        con.execute(f"LOAD {name}")
    except ModuleNotFoundError as exc:
        raise SkyfedError(
            f"the DuckDB extension {name!r} is not installed (package duckdb-extension-{name}=={duckdb.__version__})",
            hint="add it to pyproject.toml and run `make lock install`",
        ) from exc
    except duckdb.Error as exc:
        raise SkyfedError(
            f"DuckDB could not load its {name!r} extension: {exc}",
            hint=f"the extension packages must match duckdb {duckdb.__version__}; run `make install`",
        ) from exc

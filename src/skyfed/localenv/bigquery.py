"""bqemulator (DuckDB-backed, REST + gRPC Storage API): the local stand-in for BigQuery.

Pitfall handled here: the emulator runs `INSTALL spatial` at start, which downloads
from the internet and fails offline. DuckDB skips INSTALL for an extension already in
its extension folder, and that folder is `$HOME/.duckdb/extensions`. So we copy the
spatial (and avro) extensions shipped by the PyPI `duckdb-extension-*` packages into a
service-local HOME once, and start the emulator with that HOME: nothing is written to
the user's real ~/.duckdb. The emulator runs in its own folder as working directory so
a stray `.bqemu.toml` elsewhere cannot change it.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from skyfed.localenv.base import Missing, Service, http_ok, spawn
from skyfed.localenv.state import Paths

PROJECT = "skyfed-local"  # default project when a request omits it; clients still pass their own
EXTENSIONS = ("spatial", "avro")  # spatial is required at start; avro is loaded when present


def executable() -> Path:
    return Path(sys.executable).parent / "bqemulator"


class BigQuery(Service):
    name = "bigquery"
    title = "BigQuery"
    port_names = ("rest", "grpc")
    persists = True
    ready_timeout = 90.0

    def locate(self) -> None:
        if not executable().exists():
            raise Missing(
                f"the BigQuery emulator `bqemulator` is not installed next to {sys.executable}",
                "run `make install` (it installs bqemulator==1.4.0 into .venv)",
            )
        try:
            import duckdb_extension_spatial  # noqa: F401
        except ImportError:
            raise Missing(
                "bqemulator needs DuckDB's spatial extension, and the package duckdb-extension-spatial is missing",
                "run `make install` (duckdb-extension-spatial==1.5.5)",
            ) from None

    def version(self) -> str | None:
        try:
            return "bqemulator " + importlib.metadata.version("bqemulator")
        except importlib.metadata.PackageNotFoundError:
            return None

    def home_dir(self, paths: Paths) -> Path:
        return paths.data(self.name) / "home"

    def data_dir(self, paths: Paths) -> Path:
        return paths.data(self.name) / "data"

    def markers(self, paths: Paths, ports: dict[str, int]) -> list[str]:
        return ["bqemulator", str(self.data_dir(paths))]

    def prepare(self, paths: Paths, ports: dict[str, int]) -> None:
        self.data_dir(paths).mkdir(parents=True, exist_ok=True)
        ext_dir = self.home_dir(paths) / ".duckdb" / "extensions"
        import duckdb

        version = duckdb.__version__
        target = ext_dir / f"v{version}"
        if list(target.glob("*/spatial.duckdb_extension")):
            return
        import duckdb_extensions

        ext_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config={"extension_directory": str(ext_dir), "autoinstall_known_extensions": False})
        try:
            for ext in EXTENSIONS:
                try:
                    duckdb_extensions.import_extension(ext, con=con)
                except ImportError:
                    if ext == "spatial":
                        raise
        finally:
            con.close()

    def launch(self, paths: Paths, ports: dict[str, int], log: Path) -> tuple[int, list[str]]:
        cmd = [
            str(executable()), "start",
            "--rest-host", "127.0.0.1", "--rest-port", str(ports["rest"]),
            "--grpc-host", "127.0.0.1", "--grpc-port", str(ports["grpc"]),
            "--persistent", "--data-dir", str(self.data_dir(paths)),
            "--project", PROJECT, "--log-format", "json", "--log-level", "info",
        ]  # fmt: skip
        env = os.environ.copy()
        env["HOME"] = str(self.home_dir(paths))
        return spawn(cmd, log, cwd=paths.data(self.name), env=env), cmd

    def probe(self, paths: Paths, ports: dict[str, int]) -> bool:
        if not http_ok(f"http://127.0.0.1:{ports['rest']}/readyz"):
            return False
        import grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
        try:
            grpc.channel_ready_future(channel).result(timeout=2)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()

    def endpoints(self, ports: dict[str, int]) -> dict[str, str]:
        return {"rest": f"http://127.0.0.1:{ports['rest']}", "grpc": f"127.0.0.1:{ports['grpc']}"}

    def env(self, paths: Paths, ports: dict[str, int]) -> dict[str, str]:
        return {"SKYFED_BQ_ENDPOINT": f"http://127.0.0.1:{ports['rest']}", "SKYFED_BQ_GRPC": f"127.0.0.1:{ports['grpc']}"}

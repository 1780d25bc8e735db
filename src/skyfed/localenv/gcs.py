"""gcp-storage-emulator: the local stand-in for Cloud Storage, persistent on disk.

Objects live in `services/gcs/data/.cloudstorage` (the emulator's `--data-dir`, given
before the `start` subcommand). Known gaps (FIELD-NOTES.md): generation preconditions
and paging are ignored, HEAD on an object answers 501, no Pub/Sub notifications.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from skyfed.localenv.base import Missing, Service, http_ok, spawn
from skyfed.localenv.state import Paths


def executable() -> Path:
    return Path(sys.executable).parent / "gcp-storage-emulator"


class Gcs(Service):
    name = "gcs"
    title = "Cloud Storage"
    port_names = ("port",)
    persists = True
    ready_timeout = 60.0

    def locate(self) -> None:
        if not executable().exists():
            raise Missing(
                f"the Cloud Storage emulator `gcp-storage-emulator` is not installed next to {sys.executable}",
                "run `make install` (it installs gcp-storage-emulator into .venv)",
            )

    def version(self) -> str | None:
        try:
            return "gcp-storage-emulator " + importlib.metadata.version("gcp-storage-emulator")
        except importlib.metadata.PackageNotFoundError:
            return None

    def data_dir(self, paths: Paths) -> Path:
        return paths.data(self.name) / "data"

    def markers(self, paths: Paths, ports: dict[str, int]) -> list[str]:
        return ["gcp-storage-emulator", str(self.data_dir(paths))]

    def prepare(self, paths: Paths, ports: dict[str, int]) -> None:
        self.data_dir(paths).mkdir(parents=True, exist_ok=True)

    def launch(self, paths: Paths, ports: dict[str, int], log: Path) -> tuple[int, list[str]]:
        cmd = [
            str(executable()), "--data-dir", str(self.data_dir(paths)),
            "start", "--host", "127.0.0.1", "--port", str(ports["port"]),
        ]  # fmt: skip
        return spawn(cmd, log, cwd=paths.data(self.name)), cmd

    def probe(self, paths: Paths, ports: dict[str, int]) -> bool:
        return http_ok(f"http://127.0.0.1:{ports['port']}/storage/v1/b?project=skyfed-local")

    def endpoints(self, ports: dict[str, int]) -> dict[str, str]:
        return {"http": f"http://127.0.0.1:{ports['port']}"}

    def env(self, paths: Paths, ports: dict[str, int]) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['port']}"}

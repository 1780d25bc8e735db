"""Google's own Pub/Sub emulator (Java): the local stand-in for Pub/Sub, in memory only.

It is not on PyPI: it comes with the Debian package `google-cloud-cli-pubsub-emulator`
or `gcloud components install pubsub-emulator`, and needs Java. It is optional: when
missing, `status` says so and what installs it, and `up` starts the others.
Override the location with SKYFED_PUBSUB_EMULATOR=/path/to/cloud-pubsub-emulator.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from skyfed.localenv.base import Missing, Service, http_ok, spawn
from skyfed.localenv.state import Paths

DEBIAN_PATH = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
INSTALL_HINT = (
    "install the Debian package google-cloud-cli-pubsub-emulator "
    "(apt-get install google-cloud-cli-pubsub-emulator, with Java 17) "
    "or run `gcloud components install pubsub-emulator`"
)


def executable() -> Path | None:
    """The emulator's start script: $SKYFED_PUBSUB_EMULATOR, Debian's path, or next to gcloud."""
    if override := os.environ.get("SKYFED_PUBSUB_EMULATOR"):
        path = Path(override)
        return path if path.is_file() else None
    candidates = [DEBIAN_PATH]
    if gcloud := shutil.which("gcloud"):
        sdk_root = Path(os.path.realpath(gcloud)).parent.parent  # <sdk>/bin/gcloud
        candidates.append(sdk_root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator")
    return next((c for c in candidates if c.is_file()), None)


class PubSub(Service):
    name = "pubsub"
    title = "Pub/Sub"
    port_names = ("port",)
    persists = False
    optional = True
    ready_timeout = 90.0

    def locate(self) -> None:
        if executable() is None:
            raise Missing("the Pub/Sub emulator (cloud-pubsub-emulator) is not installed", INSTALL_HINT)
        java_home = os.environ.get("JAVA_HOME")
        if not (shutil.which("java") or (java_home and Path(java_home, "bin", "java").exists())):
            raise Missing("the Pub/Sub emulator needs Java, and no `java` was found", "install openjdk-17-jre-headless")

    def version(self) -> str | None:
        exe = executable()
        if exe is None:
            return None
        for jar in (exe.parent.parent / "lib").glob("cloud-pubsub-emulator-*.jar"):
            if m := re.search(r"cloud-pubsub-emulator-([\d.]+)", jar.name):
                return "cloud-pubsub-emulator " + m.group(1)
        return "cloud-pubsub-emulator"

    def markers(self, paths: Paths, ports: dict[str, int]) -> list[str]:
        return ["pubsub-emulator", f"--port={ports['port']}"]

    def launch(self, paths: Paths, ports: dict[str, int], log: Path) -> tuple[int, list[str]]:
        exe = executable()
        assert exe is not None
        cmd = [str(exe), "--host=127.0.0.1", f"--port={ports['port']}"]
        return spawn(cmd, log, cwd=paths.data(self.name)), cmd

    def probe(self, paths: Paths, ports: dict[str, int]) -> bool:
        # The emulator answers plain HTTP GET / with "Ok" on its gRPC port once serving.
        return http_ok(f"http://127.0.0.1:{ports['port']}/")

    def endpoints(self, ports: dict[str, int]) -> dict[str, str]:
        return {"grpc": f"127.0.0.1:{ports['port']}"}

    def env(self, paths: Paths, ports: dict[str, int]) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ports['port']}"}

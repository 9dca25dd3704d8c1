"""The compose stack is valid, and everything it builds and runs exists in this project."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llm_worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ["gpu2", "cpu", "demo"]


def _compose_config() -> dict:
    docker = shutil.which("docker")
    probe = (
        subprocess.run([docker or "docker", "compose", "version"], capture_output=True, text=True)
        if docker
        else None
    )
    if probe is None or probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("`docker compose` is not installed; .ci/run installs the compose plugin")
        pytest.skip("`docker compose` is not installed here")
    args = [docker, "compose", "-f", str(ROOT / "compose.yaml")]
    for profile in PROFILES:
        args += ["--profile", profile]
    done = subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_is_valid_and_refers_to_real_things() -> None:
    config = _compose_config()
    services = config["services"]
    assert {
        "redis",
        "kafka",
        "kafka-init",
        "worker-gpu0",
        "worker-gpu1",
        "worker-cpu",
        "producer",
        "prometheus",
    } <= set(services)
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).exists(), name
        if service.get("image") == "llm-worker:latest" and service.get("command"):
            assert service["command"][0] in commands, (name, service["command"])
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])
    # One GPU per worker service, by device id: `--scale` would share one GPU.
    gpu_ids = [
        d["device_ids"]
        for s in ("worker-gpu0", "worker-gpu1")
        for d in services[s]["deploy"]["resources"]["reservations"]["devices"]
    ]
    assert gpu_ids == [["0"], ["1"]]
    # The Redis healthcheck must fail on NOAUTH/LOADING, where redis-cli still exits 0.
    assert "PONG" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "--appendonly" in services["redis"]["command"]
    producer_file = services["producer"]["command"][
        services["producer"]["command"].index("--file") + 1
    ]
    assert (ROOT / producer_file).exists()


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source

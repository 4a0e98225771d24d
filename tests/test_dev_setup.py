"""`dev.sh`, the README's set-up, on what it cannot fix by itself: each case exits 1 with
a message that says what is wrong and what to do, and leaves nothing behind (no .venv).

Each test runs a copy of dev.sh in an empty folder, so the project's own .venv is never
touched. The happy path, a fresh clone set up from nothing, is what `.ci/run` proves on
every CI run.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dev.sh", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    return root


def dev_sh(
    project: pathlib.Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(project / "dev.sh"), *args],
        env=env,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def fake_python(folder: pathlib.Path, version: str) -> pathlib.Path:
    """An interpreter that says it is `version` and fails every `-c` check, as an old
    Python fails `sys.version_info >= (3, 11)`."""
    path = folder / "python-old"
    path.write_text(f'#!/bin/sh\n[ "$1" = -V ] && echo "Python {version}" && exit 0\nexit 1\n')
    path.chmod(0o755)
    return path


def test_an_old_python_is_refused_with_the_version_it_found(project: pathlib.Path) -> None:
    python = fake_python(project.parent, "3.10.12")
    result = dev_sh(project, "demo", env={**os.environ, "PYTHON": str(python)})
    assert result.returncode == 1, result.stderr
    assert "needs Python 3.11 or newer" in result.stderr
    assert "Python 3.10.12" in result.stderr
    assert "PYTHON=/path/to/python3.11" in result.stderr
    assert not (project / ".venv").exists()


def test_no_cpu_torch_wheel_is_refused_before_anything_is_installed(
    project: pathlib.Path,
) -> None:
    empty = project.parent / "wheels"
    empty.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "ELASTIQ_WHEELS": str(empty)}
    result = dev_sh(project, "setup", env=env)
    assert result.returncode == 1, result.stderr
    assert f"no CPU build of torch 2.13.0 for Python 3.{sys.version_info[1]}" in result.stderr
    assert str(empty) in result.stderr
    assert "never takes torch from a package index" in result.stderr
    assert not (project / ".venv").exists()


def tools_without_etcd(folder: pathlib.Path, *names: str) -> str:
    """A PATH holding only the named commands, so `etcd` is surely not on it."""
    folder.mkdir()
    for name in names:
        found = shutil.which(name)
        assert found is not None, name
        (folder / name).symlink_to(found)
    return str(folder)


def test_missing_etcd_without_apt_says_how_to_install_it(project: pathlib.Path) -> None:
    path = tools_without_etcd(project.parent / "bin", "bash", "dirname", "id", "mkdir")
    result = dev_sh(project, "test", env={**os.environ, "PATH": path})
    assert result.returncode == 1, result.stderr
    assert "the tests need etcd" in result.stderr
    assert "apt-get install etcd-server" in result.stderr
    assert not (project / ".venv").exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop it"
)
def test_missing_etcd_without_root_says_how_to_install_it() -> None:
    # apt-get is on PATH but the user is not root: dev.sh must not try it. pytest's own
    # temporary folders are private to root, so this one lives in a folder of its own.
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    base = pathlib.Path(tempfile.mkdtemp(prefix="elastiq-devsh-"))
    try:
        project = base / "project"
        project.mkdir()
        shutil.copy(REPO / "dev.sh", project / "dev.sh")
        path = tools_without_etcd(base / "bin", "bash", "dirname", "id", "mkdir", "apt-get")
        for folder in (base, project):
            folder.chmod(0o777)
        result = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "dev.sh", "test"],
            cwd=project,
            env={**os.environ, "PATH": path, "HOME": str(base)},
            text=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert "(not root)" in result.stderr
        assert "apt-get install etcd-server" in result.stderr
        assert not (project / ".venv").exists()
    finally:
        shutil.rmtree(base)


def test_demo_refuses_a_step_count_it_cannot_place_a_kill_in(project: pathlib.Path) -> None:
    result = dev_sh(project, "demo", "--steps", "two", env=dict(os.environ))
    assert result.returncode == 1
    assert "--steps must be a whole number >= 3, got 'two'" in result.stderr
    assert not (project / ".venv").exists()

"""The two checking scripts of scripts/dev/: same_code.py (a change touched only comments and
docstrings) against edits in a scratch git repository, and device_wheels.py (the GPU machine's
wheel bundle closes) against wheels written here with the metadata under test."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV = REPO_ROOT / "scripts" / "dev"
ORIGINAL = '''"""Module doc."""

# why the limit is 4
LIMIT = 4


def f(x):
    """Doc."""
    return x + LIMIT  # the offset
'''


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def same_code(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEV / "same_code.py"), "HEAD"], cwd=repo,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "m.py").write_text(ORIGINAL)
    git(repo, "add", "m.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    return repo


def test_same_code_passes_comment_and_docstring_edits(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    edited = ORIGINAL.replace("why the limit is 4", "a rule, and its reason").replace(
        '"""Doc."""', '"""Another doc,\n    over two lines."""'
    )
    (repo / "m.py").write_text(edited.replace("# the offset", ""))
    done = same_code(repo)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 files" in done.stdout


def test_same_code_fails_a_code_edit_however_small(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    (repo / "m.py").write_text(ORIGINAL.replace("LIMIT = 4", "LIMIT = 5"))
    done = same_code(repo)
    assert done.returncode == 1
    assert "m.py: code changed" in done.stderr


def test_same_code_fails_a_docstring_that_became_code(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    (repo / "m.py").write_text(ORIGINAL.replace('    """Doc."""\n', "    print()\n"))
    assert same_code(repo).returncode == 1


def wheel(folder: Path, name: str, version: str, tags: str, requires: list[str]) -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(folder / f"{name}-{version}-{tags}.whl", "w") as whl:
        whl.writestr(f"{name}-{version}.dist-info/METADATA", meta)


def check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEV / "device_wheels.py"), "check", str(folder)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_device_wheels_accept_a_closed_bundle(tmp_path: Path) -> None:
    # torch is on the device; the marker keeps a Windows-only need out; pkg_b meets pkg_a's pin.
    wheel(tmp_path, "pkg_a", "1.0", "cp312-cp312-manylinux_2_17_x86_64",
          ["pkg-b>=2", "torch", 'pywin32; sys_platform == "win32"'])  # fmt: skip
    wheel(tmp_path, "pkg_b", "2.1", "py3-none-any", [])
    done = check(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 wheels, one version each, closure complete" in done.stderr


def test_device_wheels_name_every_way_a_bundle_breaks(tmp_path: Path) -> None:
    wheel(tmp_path, "pkg_a", "1.0", "cp311-cp311-manylinux_2_17_x86_64", ["pkg-b>=3", "nowhere"])
    wheel(tmp_path, "pkg_b", "2.1", "py3-none-any", [])
    wheel(tmp_path, "pkg_b", "2.2", "py3-none-any", [])
    done = check(tmp_path)
    assert done.returncode == 1
    assert "not for cp312 manylinux x86_64" in done.stderr
    assert "two versions of pkg_b: 2.1 and 2.2" in done.stderr
    assert "pkg-a needs pkg-b>=3" in done.stderr
    assert "pkg-a needs nowhere: neither in" in done.stderr


def pins(*names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEV / "device_wheels.py"), "pins", *names],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_device_wheels_pin_the_versions_of_the_lock() -> None:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]
    locked = {p["name"]: p["version"] for p in lock}
    assert pins("redis", "Pydantic_Core").stdout.split() == [
        f"redis=={locked['redis']}", f"Pydantic_Core=={locked['pydantic-core']}"
    ]
    missing = pins("no-such")
    assert missing.returncode != 0 and "not in uv.lock: no-such" in missing.stderr

#!/usr/bin/env python3
"""The GPU machine's wheel bundle (scripts/dev/device_bundle.sh): versions and the closure check.

    device_wheels.py pins NAME...    NAME==VERSION for each, the version uv.lock holds
    device_wheels.py check FOLDER    one version of each wheel, tags a cp312 manylinux x86_64
                                     Python takes, and every requirement met by the folder or by
                                     the machine's own packages (device_packages.txt)

Standard library only, with pip's vendored `packaging` where `packaging` is missing: it runs on
whatever python3 the development machine has.
"""

import email.parser
import re
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
LOCK = HERE.parents[1] / "uv.lock"
DEVICE_PYTHON = "3.12.3"
DEVICE_TAGS = ({"py3", "cp312", "py312"}, {"none", "abi3", "cp312"})


def norm(name: str) -> str:
    """A project name as pip compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    lines = (HERE / "device_packages.txt").read_text().splitlines()
    return {norm(line) for line in lines if line and not line.startswith("#")}


def pins(names: list[str]) -> list[str]:
    locked = {norm(p["name"]): p["version"] for p in tomllib.loads(LOCK.read_text())["package"]}
    missing = [name for name in names if norm(name) not in locked]
    if missing:
        sys.exit(f"device_wheels: not in {LOCK.name}: {', '.join(missing)}")
    return [f"{name}=={locked[norm(name)]}" for name in names]


def device_environment() -> dict[str, str]:
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(python_version="3.12", python_full_version=DEVICE_PYTHON,
               implementation_name="cpython", implementation_version=DEVICE_PYTHON,
               platform_python_implementation="CPython", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix",
               extra="")  # fmt: skip
    return env


def takes(py_tag: str, abi_tag: str, plat_tag: str) -> bool:
    """Whether a cp312 manylinux x86_64 Python installs a wheel of these tags."""
    platform_ok = plat_tag == "any" or any(
        p.startswith("manylinux") and p.endswith("x86_64") for p in plat_tag.split(".")
    )
    pythons, abis = DEVICE_TAGS
    return bool(set(py_tag.split(".")) & pythons and set(abi_tag.split(".")) & abis) and platform_ok


def read_wheels(folder: Path, errors: list[str]) -> dict[str, tuple[str, Message]]:
    wheels: dict[str, tuple[str, Message]] = {}
    for path in sorted(folder.glob("*.whl")):
        name, version, *_, py_tag, abi_tag, plat_tag = path.name[:-4].split("-")
        if norm(name) in wheels:
            errors.append(f"two versions of {name}: {wheels[norm(name)][0]} and {version}")
        if not takes(py_tag, abi_tag, plat_tag):
            errors.append(f"{path.name}: not for cp312 manylinux x86_64")
        with zipfile.ZipFile(path) as whl:
            meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
            meta = email.parser.Parser().parsestr(whl.read(meta_name).decode())
        wheels[norm(name)] = (version, meta)
    return wheels


def check(folder: Path) -> int:
    errors: list[str] = []
    wheels = read_wheels(folder, errors)
    env, device = device_environment(), device_packages()
    for key, (version, meta) in wheels.items():
        needs_python = meta.get("Requires-Python")
        if needs_python and not Requirement(f"x{needs_python}").specifier.contains(DEVICE_PYTHON):
            errors.append(f"{key} {version}: Requires-Python {needs_python}")
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = norm(req.name)
            if dep in wheels:
                if not req.specifier.contains(Version(wheels[dep][0]), prereleases=True):
                    errors.append(f"{key} needs {req}; {folder} has {wheels[dep][0]}")
            elif dep not in device:
                errors.append(f"{key} needs {req}: neither in {folder} nor on the device")
    for error in errors:
        print(f"device_bundle: ERROR: {error}", file=sys.stderr)
    if not errors:
        print(f"device_bundle: {len(wheels)} wheels, one version each, closure complete "
              "(with the device's own packages)", file=sys.stderr)  # fmt: skip
    return 1 if errors else 0


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "pins":
        print("\n".join(pins(sys.argv[2:])))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        return check(Path(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

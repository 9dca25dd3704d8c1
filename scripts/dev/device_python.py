#!/usr/bin/env python3
"""Make DEST a Python that sees only what the GPU machine's image has: a venv (no pip of its
own) whose site-packages holds links to the distributions of device_packages.txt that this
interpreter has (torch, triton, transformers, numpy, ... at the device's versions when run by the
project's .venv, whose lock pins them so), or its base interpreter has (pip). Everything else,
redis and pydantic included, has to come from the carried wheels, as on the device.
scripts/dev/device_bundle.sh --validate runs device_setup.sh and its checks with it.

    .venv/bin/python scripts/dev/device_python.py DEST     prints DEST/bin/python

Distributions share top-level folders now and then (namespace packages); such a folder is linked
when any distribution allowed uses it, which may show a little more than the device has: those
folders are printed.
"""

import importlib.metadata as md
import re
import site
import sys
import sysconfig
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_names() -> set[str]:
    lines = (HERE / "device_packages.txt").read_text().splitlines()
    return {norm(line) for line in lines if line and not line.startswith("#")}


def top_level_entries(dist: md.Distribution) -> set[str]:
    """The site-packages entries (folders, modules, .pth files, .dist-info) a distribution owns."""
    entries = {part.parts[0] for part in dist.files or [] if not str(part).startswith("..")}
    return {entry for entry in entries if entry != "__pycache__"}


def owners_by_entry(site_dir: Path) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for dist in md.distributions(path=[str(site_dir)]):
        for entry in top_level_entries(dist):
            owners.setdefault(entry, set()).add(norm(dist.metadata["Name"]))
    return owners


def link_allowed(site_dirs: list[Path], target: Path, allowed: set[str]) -> tuple[int, list[str]]:
    """Link the allowed distributions' entries, the first site dir that has a name winning."""
    seen: set[str] = set()
    shared: list[str] = []
    for site_dir in site_dirs:
        for entry, owners in sorted(owners_by_entry(site_dir).items()):
            names = owners & allowed
            if not names or names <= seen or (target / entry).exists():
                continue
            (target / entry).symlink_to(site_dir / entry)
            if owners - allowed:
                shared.append(f"{entry} (also {', '.join(sorted(owners - allowed))})")
        seen |= {n for owners in owners_by_entry(site_dir).values() for n in owners & allowed}
    return len(list(target.iterdir())), shared


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(sys.argv[1]).resolve()
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(dest)
    target = Path(sysconfig.get_path("purelib", vars={"base": str(dest)}))
    base_site = Path(sysconfig.get_path("purelib", vars={"base": sys.base_prefix}))
    site_dirs = [Path(p) for p in site.getsitepackages()] + [base_site]
    count, shared = link_allowed(site_dirs, target, allowed_names())
    print(f"device_python: {dest}: {count} entries of the device's distributions linked",
          file=sys.stderr)  # fmt: skip
    if shared:
        print(f"device_python: shared with distributions the device lacks: {'; '.join(shared)}",
              file=sys.stderr)  # fmt: skip
    print(dest / "bin" / "python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

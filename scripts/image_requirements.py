"""The project's dependencies, read from pyproject.toml: the one list the image is built from.

The Dockerfile installs what this prints and stores its fingerprint in the image; a node's
set-up (scripts/node_setup.sh) compares that fingerprint with the mounted checkout's, and
installs only the code when they agree. No second list to keep in sync:

    python scripts/image_requirements.py pyproject.toml --extra gpu            # one per line
    python scripts/image_requirements.py pyproject.toml --extra gpu --fingerprint

Standard library only: it runs in the base image before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib


def requirements(pyproject: str, extras: Sequence[str] = ()) -> list[str]:
    """The ``project.dependencies`` of a pyproject.toml text, then those of ``extras``.

    Raises:
        ValueError: When an extra is not defined.
    """
    project = tomllib.loads(pyproject)["project"]
    listed = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"--extra: pyproject.toml defines {sorted(optional)}, got {extra!r}")
        listed += optional[extra]
    return listed


def fingerprint(listed: Sequence[str]) -> str:
    """A digest of the requirement list that ignores order and spaces."""
    canonical = "\n".join(sorted("".join(r.split()) for r in listed))
    return hashlib.sha256(canonical.encode()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="image_requirements.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("pyproject", help="path of pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="an optional extra")
    parser.add_argument(
        "--fingerprint", action="store_true", help="print the list's digest instead of the list"
    )
    args = parser.parse_args(argv)
    try:
        listed = requirements(Path(args.pyproject).read_text(encoding="utf-8"), args.extra)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {args.pyproject}: {err}", file=sys.stderr)
        return 2
    print(fingerprint(listed) if args.fingerprint else "\n".join(listed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prints an installed distribution's requirements (markers evaluated), minus the ones named.

Usage: python scripts/requirements_of.py DIST [--drop NAME ...]
"""

import argparse
from importlib.metadata import requires

from packaging.requirements import Requirement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dist")
    parser.add_argument("--drop", nargs="*", default=[])
    args = parser.parse_args()
    dropped = {name.lower() for name in args.drop}
    for line in requires(args.dist) or []:
        req = Requirement(line)
        if req.name.lower() in dropped:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()

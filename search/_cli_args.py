"""The CLI's argument types and shared flags: argparse, with one-line usage errors."""

from __future__ import annotations

import argparse

from search._validate import echo
from search.driver.watchdog import DEFAULT_STALL_MINUTES
from search.errors import SpecError


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (rule and value) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SpecError(f"{self.prog}: {message}")


def int_at_least(low: int):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an int >= {low}, got {echo(text)}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {echo(text)}")
    return value


def minutes_or_off(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number of minutes >= 0 (0: off), got {echo(text)}"
        )
    return value


def local_or_uri(path: str) -> str:
    from search.storage import absolute

    return absolute(path)


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (`auto` inside ray submit / ray job); "
        "default: start a local Ray on loopback",
    )
    parser.add_argument(
        "--num-cpus",
        type=int_at_least(1),
        default=None,
        help="CPUs for a local Ray (default: all)",
    )
    parser.add_argument(
        "--stall-minutes",
        type=minutes_or_off,
        default=DEFAULT_STALL_MINUTES,
        help="with trials running and none reporting, starting or ending for "
        "this many minutes, say which and what they wait for (0: never)",
    )


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="take the experiment's driver.lock from a driver on another host "
        "(which this machine cannot check): only when that driver is dead",
    )


def add_out(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=None, help=f"output folder (default {default})")

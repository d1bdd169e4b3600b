"""Runs a finetune-search search on the Ray cluster this script runs on.

Made for ``ray submit``, which uploads this one file to the head node and runs it there:

    ray up cluster.yaml
    ray submit cluster.yaml scripts/cluster_search.py -- configs/cifar10.yaml \\
        --storage s3://YOUR_BUCKET/finetune-search
    ray submit cluster.yaml scripts/cluster_search.py -- --smoke-test \\
        --storage s3://YOUR_BUCKET/finetune-search

The package is installed on every node by cluster.yaml's setup_commands, and the repository is
mounted at ~/finetune-search, so a relative CONFIG is looked up in the current directory first,
then there. ``--smoke-test`` runs the packaged offline quickstart with 2 trials of 1 epoch, each
on a GPU: it proves that a GPU worker starts, that TensorFlow uses its GPU and that the worker
writes to the shared storage. The search itself is ``finetune-search run CONFIG --address auto``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

REPO_ON_CLUSTER = "~/finetune-search"  # cluster.yaml's file_mounts puts the repository here
# A GPU per trial, whatever the cluster has when the search starts (its GPU workers scale from
# zero): the smoke test must exercise the GPU path, never fall back to the head's CPUs.
SMOKE_TEST_OVERRIDES = ["search.num_samples=2", "train.epochs=1", "resources.gpus_per_trial=1"]


def build_parser() -> argparse.ArgumentParser:
    """The script's options: ``finetune-search run``'s, with ``--address auto`` by default."""
    parser = argparse.ArgumentParser(
        prog="cluster_search.py",
        description="Run a finetune-search search on this Ray cluster (for `ray submit`).",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        help=f"experiment spec (YAML); a relative path is tried in the current "
        f"directory, then in {REPO_ON_CLUSTER}",
    )
    parser.add_argument(
        "--address",
        default="auto",
        help="Ray cluster to join (default: auto, the cluster of this node)",
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="results URI shared by all nodes, e.g. s3://bucket/finetune-search",
    )
    parser.add_argument("--name", default=None, help="experiment name (its folder's name)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one spec value (repeatable)",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="run the packaged quickstart with 2 trials of 1 epoch on GPUs",
    )
    return parser


def resolve_config(config: str) -> str:
    """``config`` as given if it exists (or is absolute), else under the mounted repository."""
    if os.path.isabs(config) or os.path.exists(config):
        return config
    mounted = os.path.join(os.path.expanduser(REPO_ON_CLUSTER), config)
    # A path found nowhere stays as given, so the error names what the user typed.
    return mounted if os.path.exists(mounted) else config


def cli_args(args: argparse.Namespace) -> list[str]:
    """The ``finetune-search`` command line for these arguments."""
    argv = ["run"]
    if args.config is not None:
        argv.append(resolve_config(args.config))
    argv += ["--address", args.address]
    overrides = (SMOKE_TEST_OVERRIDES if args.smoke_test else []) + args.overrides
    for override in overrides:
        argv += ["--set", override]
    if args.storage is not None:
        argv += ["--storage", args.storage]
    if args.name is not None:
        argv += ["--name", args.name]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the search; returns ``finetune-search``'s exit status (2 for a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke_test and args.config is not None:
        parser.error(
            f"--smoke-test runs the packaged quickstart; drop CONFIG, got {args.config!r}"
        )
    # The cluster launcher scales GPU workers from zero: trials asking for a GPU wait for one.
    os.environ.setdefault("FINETUNE_SEARCH_AUTOSCALING", "1")
    from search.cli import main as finetune_search

    return finetune_search(cli_args(args))


if __name__ == "__main__":
    sys.exit(main())

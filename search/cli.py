"""``finetune-search``: parses arguments and calls the library; nothing else lives here.

One class per command, its arguments beside what it does (Optuna's ``cli.py`` pattern). Errors
a user can act on (:class:`~search.errors.SpecError` and model_zoo's config errors) are printed
as one line on stderr with exit status 2, naming the command-line flag where the library named
its parameter; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from search._cli_args import (
    Parser,
    add_address,
    add_force,
    add_out,
    int_at_least,
    local_or_uri,
    seconds,
)
from search._validate import echo
from search.errors import SpecError, shorten
from search.outputs.study import METRIC

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _print_notes(spec: Any) -> None:
    for note in spec.notes:
        print(f"note: {note}", flush=True)


def _print_summary(summary: Any) -> int:
    from search.outputs.report_text import results_table

    print()
    print(results_table(summary))
    counts = summary.counts()
    print(f"\ntrials: {len(summary.trials)} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if summary.best is None:
        print("no trial produced a result")
    else:
        best = summary.best
        print(
            f"best trial: {best.trial_id}  {METRIC}={summary.best_value:.4f} "
            f"(epoch {best.best.get('epoch')})"
        )
        print(f"best config: {json.dumps(summary.best_config, sort_keys=True)}")
    print(f"experiment folder: {summary.experiment_dir}")
    if summary.interrupted:
        print(f"interrupted: continue with  finetune-search resume {summary.experiment_dir}")
        return EXIT_INTERRUPTED
    return 0


# --------------------------------------------------------------------------------------------
# commands


class Command:
    """One sub-command: its arguments and what it calls."""

    name = ""
    help = ""
    # library parameter -> this command's flag, for error messages
    flags: dict[str, str] = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class Run(Command):
    name = "run"
    help = "run a search (no CONFIG: the offline quickstart)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", nargs="?", default=None, help="experiment spec (YAML)")
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one spec value (repeatable)",
        )
        parser.add_argument("--storage", default=None, help="results folder or URI (s3://, gs://)")
        parser.add_argument("--name", default=None, help="experiment name (its folder's name)")
        add_address(parser)
        add_force(parser)

    def run(self, args: argparse.Namespace) -> int:
        from search.driver.service import run_search, with_fresh_name
        from search.spec import load_spec

        spec = load_spec(args.config, args.overrides, name=args.name, storage=args.storage)
        if args.name is None:
            # Without an explicit --name, a second run of the same spec gets its own folder.
            spec = with_fresh_name(spec)
        _print_notes(spec)
        print(
            f"experiment {spec.name}: {spec.search.num_samples} trials, max_t={spec.max_t} "
            f"epochs, searching {', '.join(spec.space) or 'nothing'} -> "
            f"{spec.experiment_path}",
            flush=True,
        )
        if "weights" not in spec.space and "backbone" not in spec.space:
            from model_zoo import weights_status

            status = weights_status(
                spec.model.get("backbone", "vgg16"), spec.model.get("weights", "imagenet")
            )
            print(f"weights: {status}", flush=True)
        return _print_summary(
            run_search(
                spec,
                address=args.address,
                num_cpus=args.num_cpus,
                force=args.force,
                stall_minutes=args.stall_minutes,
            )
        )


class Resume(Command):
    name = "resume"
    help = "continue an interrupted search"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment_dir", help="the experiment folder (path or URI)")
        add_address(parser)
        add_force(parser)

    def run(self, args: argparse.Namespace) -> int:
        from search.driver.service import resume_search

        return _print_summary(
            resume_search(
                local_or_uri(args.experiment_dir),
                address=args.address,
                num_cpus=args.num_cpus,
                force=args.force,
                stall_minutes=args.stall_minutes,
            )
        )


class Extend(Command):
    name = "extend"
    help = "run N more trials on a search, same Optuna study"
    flags = {"more": "--more"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment_dir", help="the experiment folder (path or URI)")
        parser.add_argument(
            "--more", type=int_at_least(1), required=True, help="how many more trials"
        )
        add_address(parser)
        add_force(parser)

    def run(self, args: argparse.Namespace) -> int:
        from search.driver.service import extend_search

        return _print_summary(
            extend_search(
                local_or_uri(args.experiment_dir),
                args.more,
                address=args.address,
                num_cpus=args.num_cpus,
                force=args.force,
                stall_minutes=args.stall_minutes,
            )
        )


class Validate(Command):
    name = "validate"
    help = "check a spec without running it"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="experiment spec (YAML)")
        parser.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE"
        )

    def run(self, args: argparse.Namespace) -> int:
        from search.spec import load_spec

        spec = load_spec(args.config, args.overrides)
        _print_notes(spec)
        print(
            f"{args.config}: valid. experiment {spec.name}: {spec.search.num_samples} trials, "
            f"max_t={spec.max_t}, searching {', '.join(spec.space) or 'nothing'}"
        )
        return 0


class Export(Command):
    name = "export"
    help = "write best configs, results tables, best model"
    flags = {"out_dir": "--out", "top": "--top"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment_dir", help="the experiment folder (path or URI)")
        add_out(parser, "EXPERIMENT/export")
        parser.add_argument(
            "--top", type=int_at_least(1), default=5, help="configs in top_configs.yaml"
        )
        parser.add_argument("--no-model", action="store_true", help="skip best_model.keras")

    def run(self, args: argparse.Namespace) -> int:
        from search.outputs.export import export_experiment

        result = export_experiment(
            local_or_uri(args.experiment_dir), args.out, top=args.top, with_model=not args.no_model
        )
        for name in result.files:
            print(os.path.join(result.out_dir, name))
        if result.best is None:
            print("no trial produced a result: wrote the tables only")
        else:
            print(f"best trial: {result.best.trial_id} {METRIC}={result.best.best_value:.4f}")
        if result.tracked:
            print(result.tracked)
        return 0


class Retrain(Command):
    name = "retrain"
    help = "train an exported config on train+val, test once"
    flags = {"out_dir": "--out", "epochs": "--epochs"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("best_config", help="an export's best_config.yaml")
        parser.add_argument(
            "--epochs", type=int_at_least(1), default=None, help="override train.epochs"
        )
        add_out(parser, "retrain-NAME beside BEST_CONFIG")

    def run(self, args: argparse.Namespace) -> int:
        from search.outputs.retrain import retrain

        result = retrain(args.best_config, epochs=args.epochs, out_dir=args.out)
        print(json.dumps(result.metrics, indent=2))
        print(f"model, metrics.json and history.csv in {result.out_dir}")
        return 0


class Report(Command):
    name = "report"
    help = "write a self-contained HTML report"
    flags = {"out_dir": "--out"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment_dir", help="the experiment folder (path or URI)")
        add_out(parser, "EXPERIMENT/report")

    def run(self, args: argparse.Namespace) -> int:
        from search.outputs.report import write_report

        print(write_report(local_or_uri(args.experiment_dir), args.out))
        return 0


class Status(Command):
    name = "status"
    help = "where a search stands: trials, best, driver, GPU-hours (reads only)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("experiment_dir", help="the experiment folder (path or URI)")
        parser.add_argument(
            "--watch",
            nargs="?",
            type=seconds,
            const=10.0,
            default=None,
            metavar="SECONDS",
            help="refresh every SECONDS (default 10) until the search ends",
        )

    def run(self, args: argparse.Namespace) -> int:
        from search.outputs.status import experiment_status, format_status, watch_status

        path = local_or_uri(args.experiment_dir)
        if args.watch is None:
            print(format_status(experiment_status(path)))
            return 0

        def show(text: str) -> None:
            if sys.stdout.isatty():
                print("\033[H\033[J", end="")  # clear the screen: one table, refreshed
            print(f"[{time.strftime('%H:%M:%S')}] {text}\n", flush=True)

        with contextlib.suppress(KeyboardInterrupt):
            watch_status(path, args.watch, show)
        return 0


class Predict(Command):
    name = "predict"
    help = "run an exported (or retrained) model on image files or folders"
    flags = {"top": "--top", "out": "--out", "model": "MODEL", "images": "IMAGES"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "model", help="best_model.keras of an export, or a retrain's model.keras"
        )
        parser.add_argument("images", nargs="+", help="image files (png, jpg) or folders")
        parser.add_argument(
            "--out", default=None, help="write a .csv or .json file (default: CSV on stdout)"
        )
        parser.add_argument(
            "--top",
            type=int_at_least(1),
            default=3,
            help="classes per image, most probable first (default 3)",
        )
        parser.add_argument("--batch-size", type=int_at_least(1), default=64)

    def run(self, args: argparse.Namespace) -> int:
        from search.outputs.predict import (
            check_output_path,
            predict_images,
            predictions_csv,
            write_predictions,
        )

        if args.out is not None:
            check_output_path(args.out)
        result = predict_images(
            args.model,
            args.images,
            top=args.top,
            batch_size=args.batch_size,
            on_skip=lambda path, reason: print(f"skipped: {reason}", file=sys.stderr),
        )
        if not result.named_classes:
            print(
                f"note: no class_names.json beside {args.model}: classes are label ids",
                file=sys.stderr,
            )
        if args.out is None:
            print(predictions_csv(result, args.top), end="")
        else:
            write_predictions(result, args.out, args.top)
            print(
                f"{len(result.predictions)} images predicted, {len(result.skipped)} "
                f"skipped -> {args.out}"
            )
        return 0


class Describe(Command):
    name = "describe"
    help = "print one model's summary and parameter counts"
    flags = {"input_shape": "--input-shape", "num_classes": "--classes"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "config",
            help="a spec YAML (its model settings and the baseline "
            "values), a JSON object of model settings, or a "
            "JSON file",
        )
        parser.add_argument("--input-shape", default="32,32,3", help="H,W,C (default 32,32,3)")
        parser.add_argument("--classes", type=int, default=10, help="number of classes")

    def run(self, args: argparse.Namespace) -> int:
        from search.describe import describe_model_settings, describe_settings

        settings = describe_settings(args.config)
        try:
            shape = tuple(int(p) for p in args.input_shape.split(","))
        except ValueError:
            raise SpecError(
                f"--input-shape: must be H,W,C integers, got {echo(args.input_shape)}"
            ) from None
        described = describe_model_settings(settings, input_shape=shape, num_classes=args.classes)
        # The summary's layer table does not show settings such as upsample_interpolation.
        print("model settings: " + ", ".join(f"{k}={v}" for k, v in described.settings.items()))
        print(described.summary)
        print(f"total parameters:         {described.total_params:,}")
        print(f"trainable parameters:     {described.trainable_params:,}")
        print(f"non-trainable parameters: {described.non_trainable_params:,}")
        return 0


COMMANDS: tuple[Command, ...] = (
    Run(),
    Resume(),
    Extend(),
    Status(),
    Validate(),
    Describe(),
    Export(),
    Retrain(),
    Report(),
    Predict(),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``finetune-search`` parser with one sub-parser per command."""
    parser = Parser(
        prog="finetune-search",
        description="Hyperparameter search for transfer learning: an input model "
        "+ pretrained VGG16, tuned with Ray Tune, Optuna TPE and ASHA.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def _message(err: Exception, command: Command | None) -> str:
    """The error's one line, naming the command's flag where the library named a parameter."""
    # SpecError cuts its own message; model_zoo's errors and argparse's are cut here.
    message = shorten(str(err))
    key = getattr(err, "key", None)
    if command is not None and key in command.flags and message.startswith(f"{key}:"):
        message = command.flags[key] + message[len(key) :]
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``finetune-search`` console script and ``python -m search``."""
    from model_zoo import ModelConfigError

    command = None
    try:
        args = build_parser().parse_args(argv)
        command = next(c for c in COMMANDS if c.name == args.command)
        return command.run(args)
    except (SpecError, ModelConfigError) as err:
        print(f"error: {_message(err, command)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

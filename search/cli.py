"""``finetune-search``: parses arguments and calls the library; nothing else lives here.

Errors a user can act on (:class:`~search.errors.SpecError` and model_zoo's config errors) are
printed as one line on stderr with exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from search.errors import SpecError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (rule and value) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SpecError(f"{self.prog}: {message}")


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (`auto` inside ray submit / ray job); "
                             "default: start a local Ray on loopback")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for a local Ray (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finetune-search",
                     description="Hyperparameter search for transfer learning: an input model "
                                 "+ pretrained VGG16, tuned with Ray Tune, Optuna TPE and ASHA.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a search (no CONFIG: the offline quickstart)")
    run.add_argument("config", nargs="?", default=None, help="experiment spec (YAML)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY.PATH=VALUE", help="override one spec value (repeatable)")
    run.add_argument("--storage", default=None, help="results folder or URI (s3://, gs://)")
    run.add_argument("--name", default=None, help="experiment name (its folder's name)")
    _add_address(run)

    resume = sub.add_parser("resume", help="continue an interrupted search")
    resume.add_argument("experiment_dir")
    _add_address(resume)

    extend = sub.add_parser("extend", help="run N more trials on a search, same Optuna study")
    extend.add_argument("experiment_dir")
    extend.add_argument("--more", type=int, required=True, help="how many more trials")
    _add_address(extend)

    validate = sub.add_parser("validate", help="check a spec without running it")
    validate.add_argument("config")
    validate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY.PATH=VALUE")

    export = sub.add_parser("export", help="write best configs, results tables, best model")
    export.add_argument("experiment_dir")
    export.add_argument("--out", default=None, help="output folder (default EXPERIMENT/export)")
    export.add_argument("--top", type=int, default=5, help="configs in top_configs.yaml")
    export.add_argument("--no-model", action="store_true", help="skip best_model.keras")

    retrain = sub.add_parser("retrain", help="train an exported config on train+val, test once")
    retrain.add_argument("best_config")
    retrain.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    retrain.add_argument("--out", default=None, help="output folder")

    report = sub.add_parser("report", help="write a self-contained HTML report")
    report.add_argument("experiment_dir")
    report.add_argument("--out", default=None, help="output folder (default EXPERIMENT/report)")

    describe = sub.add_parser("describe", help="print one model's summary and parameter counts")
    describe.add_argument("config", help="a spec YAML (its model settings and the baseline "
                                         "values), a JSON object of model settings, or a "
                                         "JSON file")
    describe.add_argument("--input-shape", default="32,32,3", help="H,W,C (default 32,32,3)")
    describe.add_argument("--classes", type=int, default=10, help="number of classes")
    return parser


# --------------------------------------------------------------------------------------------
# commands


def _print_summary(summary: Any) -> None:
    from search.report_text import results_table

    print()
    print(results_table(summary))
    counts = summary.counts()
    print(f"\ntrials: {len(summary.trials)} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    if summary.best is None:
        print("no trial produced a result")
    else:
        best = summary.best
        print(f"best trial: {best.trial_id}  val_accuracy={summary.best_value:.4f} "
              f"(epoch {best.best.get('epoch')})")
        print(f"best config: {json.dumps(summary.best_config, sort_keys=True)}")
    print(f"experiment folder: {summary.experiment_dir}")
    if summary.interrupted:
        print(f"interrupted: continue with  finetune-search resume {summary.experiment_dir}")


def cmd_run(args: argparse.Namespace) -> int:
    from search.service import run_search, with_fresh_name
    from search.spec import load_spec

    spec = load_spec(args.config, args.overrides, name=args.name, storage=args.storage)
    if args.name is None:
        # Without an explicit --name, a second run of the same spec gets its own folder.
        spec = with_fresh_name(spec)
    print(f"experiment {spec.name}: {spec.search.num_samples} trials, max_t={spec.max_t} "
          f"epochs, searching {', '.join(spec.space) or 'nothing'} -> {spec.experiment_path}",
          flush=True)
    if "weights" not in spec.space and "backbone" not in spec.space:
        from model_zoo import weights_status

        status = weights_status(spec.model.get("backbone", "vgg16"),
                                spec.model.get("weights", "imagenet"))
        print(f"weights: {status}", flush=True)
    summary = run_search(spec, address=args.address, num_cpus=args.num_cpus)
    _print_summary(summary)
    return 130 if summary.interrupted else 0


def cmd_resume(args: argparse.Namespace) -> int:
    from search.service import resume_search

    summary = resume_search(_abs(args.experiment_dir), address=args.address,
                            num_cpus=args.num_cpus)
    _print_summary(summary)
    return 130 if summary.interrupted else 0


def cmd_extend(args: argparse.Namespace) -> int:
    from search.service import extend_search

    summary = extend_search(_abs(args.experiment_dir), args.more, address=args.address,
                            num_cpus=args.num_cpus)
    _print_summary(summary)
    return 130 if summary.interrupted else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from search.spec import load_spec

    spec = load_spec(args.config, args.overrides)
    print(f"{args.config}: valid. experiment {spec.name}: {spec.search.num_samples} trials, "
          f"max_t={spec.max_t}, searching {', '.join(spec.space) or 'nothing'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.export import export_experiment

    result = export_experiment(_abs(args.experiment_dir), args.out, top=args.top,
                               with_model=not args.no_model)
    for name in result.files:
        print(os.path.join(result.out_dir, name))
    if result.best is None:
        print("no trial produced a result: wrote the tables only")
    else:
        print(f"best trial: {result.best.trial_id} "
              f"val_accuracy={result.best.best['val_accuracy']:.4f}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from search.retrain import retrain

    if args.epochs is not None and args.epochs < 1:
        raise SpecError(f"--epochs: must be an int >= 1, got {args.epochs}")
    result = retrain(args.best_config, epochs=args.epochs, out_dir=args.out)
    print(json.dumps(result.metrics, indent=2))
    print(f"model, metrics.json and history.csv in {result.out_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.report import write_report

    print(write_report(_abs(args.experiment_dir), args.out))
    return 0


def _describe_settings(source: str) -> dict[str, Any]:
    text = source.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as err:
            raise SpecError(f"describe: invalid JSON ({err})") from None
    elif source.endswith(".json"):
        try:
            with open(source, encoding="utf-8") as handle:
                value = json.load(handle)
        except FileNotFoundError:
            raise SpecError(f"{source}: file not found") from None
        except ValueError as err:
            raise SpecError(f"{source}: invalid JSON ({err})") from None
    else:
        from search.spec import load_spec

        spec = load_spec(source)
        value = {**spec.model, **spec.baseline_point()}
        # A searched key without an original-method value: describe its first candidate.
        for key, dist in spec.space.items():
            if key not in value and key in _model_keys():
                value[key] = dist.endpoints()[0]
    if not isinstance(value, dict):
        raise SpecError(f"describe: model settings must be a JSON object, got {value!r}")
    return value


def _model_keys() -> tuple[str, ...]:
    from model_zoo import MODEL_KEYS

    return tuple(MODEL_KEYS)


def cmd_describe(args: argparse.Namespace) -> int:
    settings = _describe_settings(args.config)
    try:
        shape = tuple(int(p) for p in args.input_shape.split(","))
    except ValueError:
        raise SpecError(f"--input-shape: must be H,W,C integers, got {args.input_shape!r}"
                        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise SpecError(f"--input-shape: must be three positive integers H,W,C, "
                        f"got {args.input_shape!r}")
    if args.classes < 2:
        raise SpecError(f"--classes: must be an int >= 2, got {args.classes}")
    from model_zoo import build_model, describe_model, model_summary

    model = build_model(settings, input_shape=shape, num_classes=args.classes)
    print(model_summary(model))
    counts = describe_model(model)
    print(f"total parameters:         {counts['total_params']:,}")
    print(f"trainable parameters:     {counts['trainable_params']:,}")
    print(f"non-trainable parameters: {counts['non_trainable_params']:,}")
    return 0


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "extend": cmd_extend,
    "validate": cmd_validate,
    "describe": cmd_describe,
    "export": cmd_export,
    "retrain": cmd_retrain,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``finetune-search`` console script and ``python -m search``."""
    from model_zoo import ModelConfigError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (SpecError, ModelConfigError) as err:
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""The ``wherewhat`` command line.

::

    wherewhat fit      --config configs/digits/default.yaml [--trainer.max_epochs 3 ...]
    wherewhat validate|test|predict --config CONFIG.yaml --ckpt_path RUN/checkpoints/last.ckpt
    wherewhat fit      --resume runs/digits/20250101-120000   # continue a run
    wherewhat tour     [--out runs/tour] [--faces-root PATH] [--full]
    wherewhat data generate scatter [--config YAML] [--cache-root DIR]
    wherewhat data preview NAME [--root PATH] --out FILE.png
    wherewhat bench MODEL_NAME [--input 1x3x128x128] [--threads N ...] [--onnx] [--json]
    wherewhat export onnx CHECKPOINT --out FILE.onnx [--input 1x1x28x28]
    wherewhat plot     RUN_DIR [--out FILE.png]   # loss and validation curves -> RUN_DIR/curves.png
    wherewhat configs  [METHOD]                   # the shipped configs, by name
    wherewhat landmarks PATH... [--faces opencv|whole|pts] [--format pts|json|csv]
                       [--out P] [--overlay DIR]  # 68 points per face on your photos

``--config`` takes a file or the name of a shipped config (``ssdir/default``; ``wherewhat
configs`` lists them). ``fit/validate/test/predict`` are LightningCLI commands (``wherewhat fit
--help`` lists every option); see :mod:`wherewhat.training.harness`. Every other command
imports its machinery only when it runs, so ``wherewhat --help`` is instant.

An error the user caused (data, config, checkpoint, option: :class:`wherewhat.errors.UserError`,
a missing file, Lightning's misconfiguration) prints one block, ``wherewhat <command>: error:
<file[:line] or key>: <what was expected, what was found>`` and ``fix: <how>``, and exits with
code 2; ``--debug`` (anywhere on the line) or ``WHEREWHAT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wherewhat import __version__
from wherewhat.errors import DataFormatError, UserError, debug_requested, error_block, yaml_error

__all__ = ["main", "build_parser", "parse_input_shape"]

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
_LIGHTNING_HELP = {
    "fit": "train a model (LightningCLI; `wherewhat fit --help` for all options)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "run a checkpoint on the predict split, save <run>/predictions.pt",
}


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1x3x128x128"`` -> ``(1, 3, 128, 128)``."""
    if not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise argparse.ArgumentTypeError(f"expected a shape like 1x3x128x128, got {text!r}")
    shape = tuple(int(part) for part in text.strip().split("x"))
    if any(size == 0 for size in shape):
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wherewhat",
        description="Visual representations that know what is where: train, evaluate, "
        "compare, visualise and export SSDIR, WorldComp2D, LZU and Spatial Prediction.",
    )
    parser.add_argument("--version", action="version", version=f"wherewhat {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error (also WHEREWHAT_DEBUG=1); any command accepts it",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in LIGHTNING_COMMANDS:  # listed for --help; dispatched before argparse runs
        commands.add_parser(name, help=_LIGHTNING_HELP[name], add_help=False)

    tour = commands.add_parser("tour", help="train every method briefly and write an HTML report")
    tour.add_argument("--out", default="runs/tour", help="output folder (default: runs/tour)")
    tour.add_argument("--faces-root", default=None, help="folder of 68-point .pts faces")
    tour.add_argument("--full", action="store_true", help="longer runs instead of the quick tour")
    tour.add_argument("--seed", type=int, default=0, help="seed of every section (default: 0)")
    tour.add_argument("--sections", nargs="+", default=None, help="run only these sections")

    data = commands.add_parser("data", help="generate or preview datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    generate = data_commands.add_parser("generate", help="generate a synthetic dataset on disk")
    generate.add_argument("dataset", choices=["scatter"], help="which dataset")
    generate.add_argument("--config", default=None, help="YAML with ScatterConfig fields")
    generate.add_argument(
        "--cache-root", default=None, help="cache folder (default: the library's)"
    )
    preview = data_commands.add_parser(
        "preview", help="draw samples of a dataset with their geometry"
    )
    preview.add_argument("name", help="dataset name: faces68 (or pts), scatter")
    preview.add_argument("--root", default=None, help="dataset folder (scatter: scene cache)")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--n", type=int, default=16, help="number of samples (default: 16)")
    preview.add_argument("--seed", type=int, default=0, help="which samples (default: 0)")

    bench = commands.add_parser("bench", help="parameters, FLOPs and CPU latency of a model")
    bench.add_argument("model", help="model name, e.g. resnet18, mobilenet_v2")
    bench.add_argument(
        "--input",
        type=parse_input_shape,
        default=(1, 3, 128, 128),
        help="input shape (default: 1x3x128x128)",
    )
    bench.add_argument("--threads", type=int, nargs="+", default=None, help="CPU thread counts")
    bench.add_argument("--onnx", action="store_true", help="also export and time ONNX Runtime")
    bench.add_argument("--quick", action="store_true", help="fewer repeats (a rough number)")
    bench.add_argument(
        "--throughput-batch", type=int, default=None, help="also time this batch size"
    )
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")

    plot = commands.add_parser(
        "plot", help="draw a run's loss and validation curves (RUN_DIR/curves.png)"
    )
    plot.add_argument("run_dir", help="run directory of `wherewhat fit` (or its metrics.csv)")
    plot.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/curves.png)")

    configs = commands.add_parser(
        "configs", help="list the shipped configs (`--config NAME` takes these names)"
    )
    configs.add_argument("method", nargs="?", default=None, help="only this method's configs")
    configs.add_argument("--paths", action="store_true", help="also print each file's path")

    marks = commands.add_parser(
        "landmarks", help="68 face landmarks on photos, with the shipped model (offline)"
    )
    marks.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders of photos")
    marks.add_argument(
        "--faces",
        choices=["opencv", "whole", "pts"],
        default="opencv",
        help="where faces are: OpenCV's bundled detector (default; needs the [faces] extra), "
        "the whole photo, or the box of a same-stem .pts file",
    )
    marks.add_argument(
        "--min-face", type=float, default=0.2,
        help="opencv: smallest face side, a fraction of the photo's shorter side (default 0.2; "
        "group photos: 0.05 with --detect-side 640)",
    )  # fmt: skip
    marks.add_argument(
        "--detect-side", type=int, default=128,
        help="opencv: the photo's longer side while searching, px (default 128)",
    )  # fmt: skip
    marks.add_argument("--boxes", default=None, help="boxes file: '<image> x1 y1 x2 y2' lines")
    marks.add_argument(
        "--format", dest="output_format", choices=["pts", "json", "csv"], default="pts",
        help="pts: one file per face beside the photo (or under --out DIR); json/csv: --out FILE",
    )  # fmt: skip
    marks.add_argument("--out", default=None, help="output folder (pts) or file (json, csv)")
    marks.add_argument("--overlay", default=None, help="also draw the landmarks: PNGs into DIR")
    marks.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    marks.add_argument("--model", default=None, help="a release .pt instead of the shipped model")
    marks.add_argument("--threads", type=int, default=1, help="threads (default: 1)")
    marks.add_argument("--overwrite", action="store_true", help="replace existing .pts files")

    export = commands.add_parser("export", help="export a trained model")
    export_commands = export.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    onnx = export_commands.add_parser("onnx", help="ONNX file that runs in ONNX Runtime")
    onnx.add_argument("checkpoint", help="Lightning checkpoint (.ckpt)")
    onnx.add_argument("--out", required=True, help="ONNX file to write")
    onnx.add_argument("--input", type=parse_input_shape, default=None, help="example input shape")
    onnx.add_argument(
        "--module-class", default=None, help="LightningModule class (default: from the checkpoint)"
    )
    onnx.add_argument(
        "--exporter",
        choices=["auto", "torchscript", "dynamo"],
        default="auto",
        help="ONNX exporter (default: auto = TorchScript tracer, dynamo if that fails)",
    )
    return parser


# -- command implementations ------------------------------------------------------------------
# Deferred imports, on purpose: the whole package (torch, Lightning, every method) takes about
# 6 s to import and `wherewhat --help` or a mistyped option should answer at once (0.05 s).
def _run_tour(args: argparse.Namespace) -> int:
    from wherewhat.tour import TourFailed, run

    kwargs: dict[str, Any] = {
        "faces_root": args.faces_root,
        "quick": not args.full,
        "seed": args.seed,
    }
    if args.sections:
        kwargs["sections"] = args.sections
    try:
        report = run(args.out, **kwargs)
    except TourFailed as failure:
        print(failure, file=sys.stderr)
        return 1
    print(report)
    return 0


def _read_yaml_mapping(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise DataFormatError(path, f"cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise DataFormatError(
            path, f"expected a mapping of ScatterConfig fields, found {type(content).__name__}"
        )
    return content


def _run_data(args: argparse.Namespace) -> int:
    if args.data_command == "generate":
        from wherewhat.data.scatter import ScatterConfig, load_or_generate

        config = ScatterConfig.from_dict(_read_yaml_mapping(args.config))
        for split in ("train", "test"):
            scenes = load_or_generate(config, split, cache_root=args.cache_root)
            print(f"{split}: {_describe_scenes(scenes)}")
        return 0
    from wherewhat.report.preview import preview_dataset

    print(preview_dataset(args.name, args.root, args.out, n=args.n, seed=args.seed))
    return 0


def _describe_scenes(scenes: Any) -> str:
    count = len(getattr(scenes, "grey", ()))
    where = getattr(scenes, "cache_dir", None)
    return f"{count} scenes" + (f" in {where}" if where is not None else "")


def _bench_table(result: dict[str, Any]) -> str:
    from wherewhat.bench.tables import format_markdown_table, format_value

    shape = "x".join(str(size) for size in result.get("input_shape", []))
    header = (
        f"{result.get('name')}  input {shape}  params {format_value(result.get('params'))}  "
        f"MACs/image {format_value(result.get('macs_per_image'))}"
    )
    columns = [
        ("backend", "backend"),
        ("threads", "threads"),
        ("batch_size", "batch"),
        ("median_ms", "median ms"),
        ("p90_ms", "p90 ms"),
        ("images_per_s", "images/s"),
        ("achieved_gflops", "GFLOP/s"),
        ("percent_of_peak", "% of peak"),
    ]
    rows = [
        {
            **row,
            "percent_of_peak": None
            if row.get("fraction_of_peak") is None
            else 100.0 * row["fraction_of_peak"],
        }
        for row in result.get("speed", [])
    ]
    return header + "\n\n" + format_markdown_table(rows, columns)


def _run_bench(args: argparse.Namespace) -> int:
    from wherewhat.bench.suite import benchmark_model_by_name

    kwargs: dict[str, Any] = {
        "onnx": args.onnx,
        "quick": args.quick,
        "throughput_batch": args.throughput_batch,
    }
    if args.threads is not None:
        kwargs["threads"] = tuple(args.threads)
    result = benchmark_model_by_name(args.model, args.input, **kwargs)
    print(json.dumps(result, indent=2, default=str) if args.json else _bench_table(result))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from wherewhat.bench.onnx_export import export_checkpoint_to_onnx

    kwargs: dict[str, Any] = {"module_class": args.module_class, "exporter": args.exporter}
    if args.input is not None:
        kwargs["input_shape"] = args.input
    exported = export_checkpoint_to_onnx(args.checkpoint, args.out, **kwargs)
    print(getattr(exported, "path", None) or args.out)
    return 0


def _run_plot(args: argparse.Namespace) -> int:
    from wherewhat.training.plot import write_curves

    print(write_curves(args.run_dir, args.out))
    return 0


def _run_landmarks(args: argparse.Namespace) -> int:
    from wherewhat.landmarking.command import run_landmarks
    from wherewhat.landmarking.predictor import LandmarkPredictor

    detector = None if args.faces == "pts" or args.boxes else args.faces
    options = {"backend": args.backend, "threads": args.threads, "detector": detector}
    if detector == "opencv":
        options["detector_options"] = {"min_face": args.min_face, "detect_side": args.detect_side}
    if args.model is None:
        predictor = LandmarkPredictor.shipped(**options)
    else:
        predictor = LandmarkPredictor.from_release(args.model, **options)
    run = run_landmarks(
        args.paths, predictor, faces=args.faces, boxes_file=args.boxes,
        output_format=args.output_format, out=args.out, overlay=args.overlay,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(run.summary())
    return 0


def _run_configs(args: argparse.Namespace) -> int:
    from wherewhat.training.config_catalog import shipped_configs

    shown = [c for c in shipped_configs() if args.method in (None, c.name.split("/")[0])]
    if not shown:
        methods = sorted({c.name.split("/")[0] for c in shipped_configs()})
        raise UserError(f"no shipped configs for {args.method!r}; methods: {', '.join(methods)}")
    width = max(len(c.name) for c in shown)
    for config in shown:
        print(f"{config.name:<{width}}  {config.summary}")
        if args.paths:
            print(f"{'':<{width}}  {config.path}")
    print("\nuse: wherewhat fit --config NAME  (e.g. --config ssd/default)")
    return 0


_HANDLERS = {
    "configs": _run_configs,
    "landmarks": _run_landmarks,
    "tour": _run_tour,
    "data": _run_data,
    "bench": _run_bench,
    "export": _run_export,
    "plot": _run_plot,
}


def _is_user_error(error: BaseException) -> bool:
    """Errors the user caused (data, config, checkpoint, option): shown as one block."""
    if isinstance(error, UserError | FileNotFoundError):
        return True
    # Lightning's own "this option cannot work here" (e.g. an accelerator this machine lacks);
    # looked up, not imported, so that the light commands never import Lightning.
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    misconfiguration = getattr(exceptions, "MisconfigurationException", None)
    return misconfiguration is not None and isinstance(error, misconfiguration)


def _user_error(error: BaseException) -> BaseException | None:
    """``error`` or the first error it was raised from (``raise ... from``) that the user
    caused: jsonargparse wraps an error raised while it builds a class in a ValueError."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if _is_user_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _dispatch(argv: list[str]) -> None:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from wherewhat.training.harness import run_lightning_cli

        run_lightning_cli(argv)
        return
    args = build_parser().parse_args(argv)
    code = _HANDLERS[args.command](args)
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``wherewhat`` console script and of ``python -m wherewhat``.

    An error the user caused prints one block (what, where, what was expected, how to fix) and
    exits with code 2; ``--debug`` (anywhere on the line) or ``WHEREWHAT_DEBUG=1`` also prints
    its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        _dispatch(argv)
    except Exception as error:
        cause = _user_error(error)
        if cause is None:
            raise
        if debug:
            traceback.print_exc()
        command = argv[0] if argv else "wherewhat"
        print(error_block(command, cause, debug=debug), file=sys.stderr, flush=True)
        raise SystemExit(2) from None

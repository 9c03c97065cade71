"""`agegender export` (ONNX / TensorRT engine) and `agegender bench` (speed of every backend, SSR-Net for scale,
and the whole pipeline on 640x480 frames with real faces).

The bench measures what a user gets: each backend through the same `Backend` interface the estimator uses, the
end-to-end rate through the real `Estimator` with the default detector. Every number is the median of `--repeats`
timed rounds after a warm-up; a round repeats the call for about `--seconds / --repeats` seconds.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parent / "samples"
AAF_FACES = REPO_ROOT.parent / "shared" / "data" / "aaf" / "aglined faces"
FRAME_W, FRAME_H = 640, 480
BACKGROUND_BGR = (128, 128, 128)


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="export the network as ONNX (dynamic batch) or a TensorRT engine (torch2trt)")
    p.add_argument("--format", required=True, choices=["onnx", "tensorrt"])
    p.add_argument("--weights", help="model .pt with its .json card beside it (default: the package's)")
    p.add_argument("--out", help="output file (default: ONNX beside the weights, NAME.onnx, with its sha256 recorded "
                                 "in the model card, as the package ships it; the engine in its cache beside the "
                                 "weights, or in $AGEGENDER_CACHE/tensorrt when that folder is read-only)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--fp32", action="store_true", help="TensorRT: build an FP32 engine (default FP16)")
    p.add_argument("--max-batch-size", type=int, default=32, help="TensorRT: largest batch of one engine call")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="faces/s of each backend, SSR-Net for scale, end-to-end fps on 640x480 frames")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--backends", default="tensorrt,onnxruntime,torch",
                   help="comma-separated, from tensorrt, onnxruntime, torch (unavailable ones report why)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (the median is reported)")
    p.add_argument("--seconds", type=float, default=1.0, help="approximate time spent per measurement")
    p.add_argument("--weights", help="paper-net weights (default: the package's; random-init when there are none)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0: their default)")
    p.add_argument("--torch-device", default="cpu", help="device of the torch backend (cpu, cuda)")
    p.add_argument("--max-batch-size", type=int, default=32, help="TensorRT engine's largest batch")
    p.add_argument("--no-ssrnet", action="store_true", help="skip the SSR-Net comparison")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the 640x480 end-to-end measurement")
    p.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------------------------------------------
# export


@contextlib.contextmanager
def quiet_tracer():
    """Hide the ONNX tracer's warning about the model's Python-level branch on the (constant) number of heads."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def cmd_export(args) -> int:
    from .backend_common import BackendUnavailable
    from .cli import CommandError
    from .weights import WeightsError, default_weights_path, export_onnx_beside, load_model, onnx_beside

    weights_path = Path(args.weights) if args.weights else default_weights_path()
    if args.format == "onnx" and (not args.out or Path(args.out).resolve() == onnx_beside(weights_path).resolve()):
        # Beside the weights: the file the ONNX Runtime backend runs, so its sha256 goes into the model card.
        try:
            with quiet_tracer():
                entry = export_onnx_beside(args.weights, opset=args.opset)
        except WeightsError as error:
            raise CommandError(str(error)) from error
        except OSError as error:
            raise CommandError(f"{onnx_beside(weights_path)}: cannot write ({error.strerror or error})") from error
        print(onnx_beside(weights_path))
        print(f"sha256 {entry['sha256']} recorded in {weights_path.with_suffix('.json')}", file=sys.stderr)
        return 0
    try:
        model, _card = load_model(args.weights)
    except WeightsError as error:
        raise CommandError(str(error)) from error
    if args.format == "onnx":
        from .torch_backend import export_onnx

        out = Path(args.out)
        try:
            with quiet_tracer():
                path = export_onnx(model, out, opset=args.opset)
        except OSError as error:
            raise CommandError(f"{out}: cannot write ({error.strerror or error})") from error
        print(path)
        return 0
    from .tensorrt_backend import TensorRTBackend

    if args.max_batch_size < 1:
        raise CommandError("--max-batch-size must be >= 1")
    try:
        backend = TensorRTBackend.for_weights(model, weights_path, engine=args.out, fp16=not args.fp32,
                                              max_batch_size=args.max_batch_size)
    except BackendUnavailable as error:
        raise CommandError(str(error)) from error
    print(backend.engine_path)
    return 0


# --------------------------------------------------------------------------------------------------------------
# timing


def time_call(fn: Callable[[], object], seconds: float, repeats: int, warmup: int = 3) -> List[float]:
    """Seconds per call, one value per timed round, after `warmup` untimed calls. A round repeats the call for about
    seconds / repeats; a slow call is timed once per round, and rounds stop early (after at least 3) when a
    measurement runs past 3x its budget."""
    for _ in range(max(warmup, 1)):
        fn()
    start = time.perf_counter()
    fn()
    single = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(seconds / max(repeats, 1) / single))
    samples: List[float] = []
    begun = time.perf_counter()
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
        if len(samples) >= 3 and time.perf_counter() - begun > 3 * seconds:
            break
    return samples


def measure_backend(backend, batch_sizes: List[int], seconds: float, repeats: int, seed: int = 0) -> Dict:
    """{"faces_per_s": {"1": ..}, "latency_ms": {"1": ..}} of one backend (medians of the rounds)."""
    rng = np.random.default_rng(seed)
    faces_per_s, latency_ms = {}, {}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
        median = statistics.median(time_call(lambda: backend(x), seconds, repeats))
        faces_per_s[str(batch)] = round(batch / median, 1)
        latency_ms[str(batch)] = round(median * 1e3, 3)
    return {"faces_per_s": faces_per_s, "latency_ms": latency_ms}


# --------------------------------------------------------------------------------------------------------------
# backends for a model (random-init models never touch the user's caches: they live in a temporary folder)


def make_backend(name: str, model, weights_path: Path, workdir: Path, *, threads: int = 0, torch_device: str = "cpu",
                 max_batch_size: int = 32, label: str = "paper"):
    from .backends import BackendUnavailable, OnnxRuntimeBackend
    from .torch_backend import TorchBackend, export_onnx

    if name == "torch":
        return TorchBackend(copy.deepcopy(model), torch_device)  # moving it to a device must not move `model`
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise BackendUnavailable("onnxruntime is not installed") from error
        with quiet_tracer():
            onnx_file = export_onnx(model, workdir / f"{label}.onnx")
        return OnnxRuntimeBackend(onnx_file, threads=threads)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend.for_weights(model, weights_path, fp16=True, max_batch_size=max_batch_size)
    raise ValueError(f"unknown backend {name!r}")


def backend_details(backend) -> Dict:
    details = {}
    if getattr(backend, "providers", None):
        details["providers"] = list(backend.providers)
    if getattr(backend, "precision", None):
        details["precision"] = backend.precision
    return details


def paper_weights(requested: Optional[str], workdir: Path):
    """(model, weights path, label for the JSON): the requested or default weights, else random-init ones saved in
    `workdir` (speed does not depend on the weights' values)."""
    import torch

    from .model import create_model
    from .weights import default_weights_path, load_model, save_weights

    path = Path(requested) if requested else default_weights_path()
    if requested or path.is_file():
        model, _card = load_model(path)
        return model, path, str(path)
    torch.manual_seed(0)
    model = create_model("paper").eval()
    path = workdir / "paper_random_init.pt"
    save_weights(model, path, {"architecture": "paper", "model_args": {}, "training_data": "random init (bench)"})
    return model, path, "random-init"


# --------------------------------------------------------------------------------------------------------------
# 640x480 frames with real faces


def _paste(frame: np.ndarray, image: np.ndarray, centre_xy, height: int) -> None:
    """Paste `image` scaled to `height` pixels high, centred at centre_xy (clipped to the frame)."""
    import cv2

    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    scaled = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if height < h else cv2.INTER_LINEAR)
    x0, y0 = int(centre_xy[0] - width / 2), int(centre_xy[1] - height / 2)
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + width, frame.shape[1]), min(y0 + height, frame.shape[0])
    frame[fy0:fy1, fx0:fx1] = scaled[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]


def blank_frame() -> np.ndarray:
    frame = np.empty((FRAME_H, FRAME_W, 3), np.uint8)
    frame[:] = BACKGROUND_BGR
    return frame


def five_face_slots():
    """Centres of five faces on a 640x480 frame: 3 above, 2 below."""
    return [(107, 125), (320, 125), (533, 125), (213, 355), (427, 355)]


def build_frames(detector, aaf_dir: Path = AAF_FACES, face_height: int = 180) -> Dict:
    """{"1": frame, "5": frame, "sources": {...}}: the bundled astronaut photo alone; five real faces (AAF photos
    when present, each kept only if the detector finds it alone on the frame; else crops of the astronaut's head)."""
    import cv2

    astronaut = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    one = blank_frame()
    _paste(one, astronaut, (FRAME_W / 2, FRAME_H / 2), 420)
    sources = {"1": ["agegender_ros/samples/astronaut.jpg"]}

    slots = five_face_slots()
    faces: List[np.ndarray] = []
    names: List[str] = []
    candidates = sorted(aaf_dir.glob("*.jpg")) if aaf_dir.is_dir() else []
    if candidates:
        step = max(1, len(candidates) // 60)
        for path in candidates[::step]:
            image = cv2.imread(str(path))
            if image is None:
                continue
            probe = blank_frame()
            _paste(probe, image, slots[len(faces)], face_height)
            if len(detector.detect(probe)) == 1:
                faces.append(image)
                names.append(f"aaf/aglined faces/{path.name}")
            if len(faces) == 5:
                break
    if len(faces) < 5:
        head = astronaut[10:260, 110:340]  # the astronaut's head with some margin
        faces, names = [head] * 5, ["agegender_ros/samples/astronaut.jpg (head crop)"] * 5
    five = blank_frame()
    for slot, image in zip(slots, faces):
        _paste(five, image, slot, face_height)
    sources["5"] = names
    # No face: what a robot's camera sees most of the time, and where the detectors' close-up pass runs too.
    sources["0"] = ["a blank frame"]
    return {"0": blank_frame(), "1": one, "5": five, "sources": sources}


def measure_end_to_end(backend, backend_name: str, seconds: float, repeats: int) -> Dict:
    from .estimator import Estimator
    from .faces import create_detector

    detector = create_detector("auto")
    frames = build_frames(detector)
    estimator = Estimator(detector, backend)
    result: Dict = {"detector": detector.name, "backend": backend_name, "frame": f"{FRAME_W}x{FRAME_H}",
                    "faces_found": {}, "frame_ms": {}, "detector_ms": {}, "sources": frames["sources"]}
    for key, field in (("0", "fps_no_face"), ("1", "fps_1_face"), ("5", "fps_5_faces")):
        frame = frames[key]
        result["faces_found"][key] = len(estimator(frame))
        median = statistics.median(time_call(lambda: estimator(frame), seconds, repeats))
        result[field] = round(1.0 / median, 1)
        result["frame_ms"][key] = round(median * 1e3, 2)
        result["detector_ms"][key] = round(
            statistics.median(time_call(lambda: detector.detect(frame), seconds / 2, repeats)) * 1e3, 2)
    # What --flip-tta (node parameter flip_tta) costs: one more network pass per face, nothing more per frame.
    mirrored = Estimator(detector, backend, flip_tta=True)
    result["flip_tta_frame_ms"] = {
        key: round(statistics.median(time_call(lambda: mirrored(frames[key]), seconds, repeats)) * 1e3, 2)
        for key in ("1", "5")}
    return result


# --------------------------------------------------------------------------------------------------------------
# bench


def describe_device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"CPU: {cpu}, {os.cpu_count()} logical cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; GPU: {torch.cuda.get_device_name(0)}"
        else:
            text += "; no GPU"
    except ImportError:
        pass
    return text


def _versions() -> Dict:
    versions = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "tensorrt", "torch2trt", "cv2"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "present")
        except Exception:  # noqa: BLE001 - absent or broken: simply not listed
            pass
    return versions


def _goal(value, target, met) -> Dict:
    return {"value": None if value is None else round(value, 2), "target": target, "met": met}


def evaluate_goals(report: Dict) -> Dict:
    backends = report["backends"]
    goals = {}
    torch_fps = backends.get("torch", {}).get("faces_per_s", {}).get("32")
    ort_fps = backends.get("onnxruntime", {}).get("faces_per_s", {}).get("32")
    if torch_fps and ort_fps:
        ratio = ort_fps / torch_fps
        goals["onnxruntime_over_torch_at_batch_32"] = _goal(ratio, ">= 1.5", ratio >= 1.5)
    ratios = report.get("ssrnet", {}).get("speed_over_paper", {}).get("onnxruntime")
    if ratios:
        worst = max(ratios.values())
        goals["ssrnet_over_paper_onnxruntime_max"] = _goal(worst, "<= 2.0", worst <= 2.0)
    fps = report.get("end_to_end", {}).get("fps_1_face")
    if fps is not None:
        goals["end_to_end_fps_1_face"] = _goal(fps, ">= 30", fps >= 30)
    return goals


def run_bench(args) -> Dict:
    import torch

    from .backends import BACKENDS, BackendUnavailable
    from .model import count_parameters

    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        from .cli import CommandError

        raise CommandError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    report: Dict = {"backends": {}, "model": "paper"}
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="agegender-bench-") as tmp:
        workdir = Path(tmp)
        model, weights_path, weights_label = paper_weights(args.weights, workdir)
        report["weights"] = weights_label
        built = {}
        for name in names:
            log.info("bench: paper net on %s", name)
            try:
                backend = make_backend(name, model, weights_path, workdir, threads=args.threads,
                                       torch_device=args.torch_device, max_batch_size=args.max_batch_size)
            except BackendUnavailable as error:
                report["backends"][name] = {"error": str(error)}
                continue
            except Exception as error:  # noqa: BLE001 - e.g. a conversion failure: reported, the others still run
                log.exception("bench: backend %s failed", name)
                report["backends"][name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            built[name] = backend
            report["backends"][name] = {**measure_backend(backend, batch_sizes, args.seconds, args.repeats),
                                        **backend_details(backend)}

        if not args.no_ssrnet:
            report["ssrnet"] = bench_ssrnet(names, report, workdir, batch_sizes, args)

        if not args.no_end_to_end:
            # The pipeline as deployed: the first available backend in `auto` order.
            order = [n for n in ("tensorrt", "onnxruntime", "torch") if n in built]
            if not order:
                report["end_to_end"] = {"error": "no backend available"}
            else:
                log.info("bench: end to end with %s", order[0])
                try:
                    report["end_to_end"] = measure_end_to_end(built[order[0]], order[0], args.seconds, args.repeats)
                except Exception as error:  # noqa: BLE001 - e.g. no face detector: report, do not crash
                    report["end_to_end"] = {"error": f"{type(error).__name__}: {error}"}
    report["goals"] = evaluate_goals(report)
    report["device"] = describe_device()
    report["threads"] = {"torch": torch.get_num_threads(), "onnxruntime": args.threads or "default (one per core)"}
    report["settings"] = {"batch_sizes": batch_sizes, "repeats": args.repeats, "seconds": args.seconds,
                          "statistic": "median of rounds after warm-up", "paper_params": count_parameters(model)}
    if load_before is not None:
        report["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    report["versions"] = _versions()
    return report


def bench_ssrnet(names: List[str], report: Dict, workdir: Path, batch_sizes: List[int], args) -> Dict:
    """SSR-Net (random-init) on the same backends as the paper net, and its speed relative to the paper net."""
    import torch

    from .model import count_parameters, create_model
    from .weights import save_weights

    try:
        torch.manual_seed(0)
        ssrnet = create_model("ssrnet").eval()
    except ValueError as error:  # not registered (baselines missing)
        return {"error": str(error)}
    result: Dict = {"weights": "random-init", "params": count_parameters(ssrnet)}
    weights = workdir / "ssrnet_random_init.pt"
    save_weights(ssrnet, weights, {"architecture": "ssrnet", "model_args": {}, "training_data": "random init (bench)"})
    ratios: Dict = {}
    for name in names:
        if "error" in report["backends"].get(name, {"error": ""}):
            continue
        log.info("bench: ssrnet on %s", name)
        try:
            backend = make_backend(name, ssrnet, weights, workdir, threads=args.threads,
                                   torch_device=args.torch_device, max_batch_size=args.max_batch_size, label="ssrnet")
            result[name] = measure_backend(backend, batch_sizes, args.seconds, args.repeats)
        except Exception as error:  # noqa: BLE001 - e.g. an export failure: reported in the JSON, not a crash
            result[name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        paper = report["backends"][name]["faces_per_s"]
        ratios[name] = {b: round(result[name]["faces_per_s"][b] / paper[b], 2) for b in paper}
    result["speed_over_paper"] = ratios
    return result


def cmd_bench(args) -> int:
    report = run_bench(args)
    if args.json:
        print(json.dumps(report), flush=True)
        return 0
    print(f"device: {report['device']}   weights: {report['weights']}")
    for name, result in report["backends"].items():
        if "error" in result:
            print(f"{name:12s} unavailable: {result['error']}")
            continue
        cells = "  ".join(f"b{b}: {fps:8.1f} faces/s ({result['latency_ms'][b]:.2f} ms)"
                          for b, fps in result["faces_per_s"].items())
        print(f"{name:12s} {cells}")
    for name, result in report.get("ssrnet", {}).items():
        if isinstance(result, dict) and "faces_per_s" in result:
            cells = "  ".join(f"b{b}: {fps:8.1f}" for b, fps in result["faces_per_s"].items())
            print(f"ssrnet/{name:5s} {cells} faces/s")
    e2e = report.get("end_to_end", {})
    if "error" in e2e:
        print(f"end to end: {e2e['error']}")
    elif e2e:
        print(f"end to end ({e2e['detector']} + {e2e['backend']}, {e2e['frame']}): {e2e['fps_1_face']} fps with 1 face, "
              f"{e2e['fps_5_faces']} fps with 5 faces, {e2e['fps_no_face']} fps with none")
        flip = e2e["flip_tta_frame_ms"]
        print(f"  per frame: {e2e['frame_ms']['1']} ms with 1 face, {e2e['frame_ms']['5']} ms with 5; "
              f"with --flip-tta {flip['1']} ms and {flip['5']} ms")
    for goal, value in report["goals"].items():
        print(f"goal {goal}: {value['value']} (target {value['target']}): {'met' if value['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))

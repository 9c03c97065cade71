"""agegender_node: the ROS 2 node (rclpy).

    python -m agegender_ros.node --ros-args --params-file config/nano.yaml
    ros2 run agegender_ros agegender_node --ros-args -p image_topics:="['/camera/image_raw']"
    python -m agegender_ros.node --help          # the parameters, without starting ROS

Reads sensor_msgs/Image and sensor_msgs/CompressedImage topics (sensor-data QoS, depth 1), finds the faces,
estimates age and gender, tracks the faces across frames (stable ids, smoothed estimates) and publishes
agegender_ros/AgeGenderArray on /agegender/detections with the image's header -- also when no face is found.
Optional: an annotated image (/agegender/debug_image), vision_msgs/Detection2DArray (when vision_msgs is
installed) and diagnostic_msgs/DiagnosticArray on /diagnostics (rate, latency, drops).

Latency stays bounded: subscription callbacks only keep the newest message per topic (a newer one replaces an
unprocessed one, which counts as dropped); one worker thread decodes and processes the newest frames, round
robin over the topics. A malformed image (bad size/step/data, unknown encoding, corrupt JPEG) or a failing
frame is skipped with a throttled warning; the node keeps going.

Parameters: see `launch_args.NODE_PARAMETERS` (or --help, or `ros2 param describe`). Bad values stop the node
at start-up with one error listing every problem (exit status 2); a start-up failure such as missing weights
exits with status 1.

The harness the demo, the benchmark and the tests share (`RosSession`, `Probe`) is in agegender_ros.ros_session,
the `ros2 topic echo` printer in agegender_ros.ros_echo; the offline bag processor (`agegender bag`) in
agegender_ros.bag. rclpy is imported by this module and ros_session only.

Compatible with Humble's rclpy (Jetson Orin Nano, JetPack 6) and Python 3.8 syntax (JetPack 4.6 containers).
"""
from __future__ import annotations

import array
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from agegender_ros.launch_args import NODE_PARAMETERS, PARAMETERS_BY_NAME, ParameterError, ParamSpec, \
    detector_options, spec_problem, split_topics, validate_parameters
try:
    from agegender_ros.msg import AgeGender, AgeGenderArray
except ImportError as _error:  # the generated half of the package is missing
    raise ImportError(f"agegender_ros.msg is not importable ({_error}): build the package with colcon and "
                      "`source install/setup.bash` first") from _error
from agegender_ros.message_fields import agegender_fields
from agegender_ros.ros_image import ImageDecodeError, RawImage, decode_compressed, decode_raw, encode_raw
from agegender_ros.tracking import FaceTracker, TrackIds, untracked

try:  # Humble and later
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - older rclpy
    class ExternalShutdownException(Exception):
        pass

try:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # optional
    DiagnosticArray = DiagnosticStatus = KeyValue = None

try:
    import vision_msgs.msg as vision_msgs
except ImportError:  # optional
    vision_msgs = None

try:
    from cv_bridge import CvBridge
except Exception:  # optional; a broken cv_bridge (ROS 1 package, OpenCV mismatch) must not stop the node
    CvBridge = None

NODE_NAME = "agegender_node"
DIAGNOSTICS_TOPIC = "/diagnostics"

# Inputs: the newest frame only. Best effort accepts both reliable and best-effort publishers (cameras).
INPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
DETECTIONS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE)
# Reliable so that rviz (reliable by default) and best-effort viewers both connect; depth 1 never queues frames.
DEBUG_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
DIAGNOSTICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)

EXIT_BAD_PARAMETERS = 2
EXIT_STARTUP_FAILED = 1


class StartupError(RuntimeError):
    """The node cannot start; the message was logged. `exit_code` is what main() returns."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------------------------
# Small helpers


class Throttle:
    """At most one message per `period_s`; `check()` says whether to emit now and how many were held back."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._last = -math.inf
        self.suppressed = 0  # since the last emitted message
        self.emitted = 0
        self.total = 0

    def check(self) -> int | None:
        """None: suppress this one. An int: emit it, mentioning that many suppressed since the last one."""
        self.total += 1
        now = self._clock()
        if now - self._last >= self.period_s:
            self._last = now
            held, self.suppressed = self.suppressed, 0
            self.emitted += 1
            return held
        self.suppressed += 1
        return None


def _log_warning(logger, text: str) -> None:
    (getattr(logger, "warning", None) or logger.warn)(text)


def _subscriber_count(node, publisher, topic: str) -> int:
    counter = getattr(publisher, "get_subscription_count", None)
    return counter() if counter is not None else node.count_subscribers(topic)


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_message(raw: RawImage, header: Header | None = None) -> Image:
    """sensor_msgs/Image from the fields in `raw` (data set as array('B'): the fast path on every rclpy)."""
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.step = int(raw.height), int(raw.width), int(raw.step)
    msg.encoding = raw.encoding
    msg.is_bigendian = 1 if raw.is_bigendian else 0
    msg.data = array.array("B", raw.data)
    return msg


def faces_to_message(header: Header, faces, width: int, height: int) -> AgeGenderArray:
    """AgeGenderArray for tracked faces (tracking.TrackedFace or anything with the same fields)."""
    out = AgeGenderArray()
    out.header = header
    for face in faces:
        fields = agegender_fields(face, width, height)
        x, y, w, h = fields.pop("roi")
        item = AgeGender(**fields)
        item.roi = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)
        out.faces.append(item)
    return out


def detection2d_array(module, header: Header, faces) -> Any:
    """vision_msgs/Detection2DArray: one Detection2D per face, class 'face' with the detector score, id = the
    track id. Works with vision_msgs 4.x (Humble+: bbox.center.position, results[].hypothesis) and 3.x."""
    out = module.Detection2DArray()
    out.header = header
    for face in faces:
        x1, y1, x2, y2 = (float(v) for v in face.box)
        det = module.Detection2D()
        det.header = header
        centre = det.bbox.center
        target = centre.position if hasattr(centre, "position") else centre
        target.x, target.y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        det.bbox.size_x, det.bbox.size_y = max(0.0, x2 - x1), max(0.0, y2 - y1)
        hypothesis = module.ObjectHypothesisWithPose()
        if hasattr(hypothesis, "hypothesis"):
            hypothesis.hypothesis.class_id = "face"
            hypothesis.hypothesis.score = float(face.score)
        else:
            hypothesis.id = "face"
            hypothesis.score = float(face.score)
        det.results.append(hypothesis)
        if hasattr(det, "id"):
            det.id = str(int(getattr(face, "track_id", 0)) or "")
        out.detections.append(det)
    return out


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    constraints = [spec.constraints] if spec.constraints else []
    if spec.choices:
        constraints.insert(0, "one of: " + ", ".join(spec.choices))
    descriptor = ParameterDescriptor(description=spec.description, additional_constraints="; ".join(constraints))
    if spec.kind == "int" and spec.low is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif spec.kind == "float" and spec.low is not None:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                              step=0.0)]
    if spec.kind == "str_list":
        # An empty string array cannot be declared statically typed on every rclpy (Humble infers BYTE_ARRAY
        # from []); the type is checked by validate_parameters instead.
        descriptor.dynamic_typing = True
    return descriptor


def parameters_help() -> str:
    lines = ["agegender_node parameters (set with --ros-args -p NAME:=VALUE or --params-file FILE):", ""]
    for spec in NODE_PARAMETERS:
        allowed = ""
        if spec.choices:
            allowed = f" [{' | '.join(spec.choices)}]"
        elif spec.low is not None:
            allowed = f" [{spec.low}..{spec.high}]"
        lines.append(f"  {spec.name} ({spec.kind}, default {spec.default!r}){allowed}")
        lines.append(f"      {spec.description}" + (f" ({spec.constraints})" if spec.constraints else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The node


@dataclass
class _Input:
    topic: str
    compressed: bool
    tracker: FaceTracker | None
    pending: Any = None  # (message, monotonic receive time) not yet taken by the worker
    received: int = 0
    dropped: int = 0


@dataclass
class _Period:
    """Counters of one diagnostics period."""

    received: int = 0
    processed: int = 0
    errors: int = 0
    latency_ms: list = field(default_factory=list)  # image stamp -> detections published
    processing_ms: list = field(default_factory=list)  # message received -> detections published


class AgeGenderNode(Node):
    """Faces -> age, gender and track id on AgeGenderArray. Start-up problems raise StartupError (logged)."""

    def __init__(self, node_name: str = NODE_NAME, *, context=None, parameter_overrides: list | None = None,
                 estimator=None, **node_kwargs):
        super().__init__(node_name, context=context, parameter_overrides=parameter_overrides, **node_kwargs)
        self._stop = threading.Event()
        self._cond = threading.Condition(threading.Lock())
        self._lock = self._cond  # one lock for the frame slots and the counters
        self._worker: threading.Thread | None = None
        self._period = _Period()
        self._period_start = time.monotonic()
        self.stats = {"received": 0, "processed": 0, "dropped": 0, "decode_errors": 0, "failures": 0, "faces": 0}
        self._inputs: list = []
        self._next_input = 0
        self._last_start = -math.inf
        try:
            self.params = self._read_parameters()
            self.estimator = estimator or self._create_estimator()
            self._setup_io()
        except StartupError as error:
            self.get_logger().error(str(error))
            self.destroy_node()
            raise
        self._worker = threading.Thread(target=self._work, name="agegender_worker", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------------------------------------- start-up

    def _read_parameters(self) -> dict:
        overrides = getattr(self, "_parameter_overrides", {})
        values, problems = {}, []
        for spec in NODE_PARAMETERS:
            override = overrides.get(spec.name)
            if spec.kind == "float" and override is not None and isinstance(override.value, int) \
                    and not isinstance(override.value, bool):
                overrides[spec.name] = Parameter(spec.name, value=float(override.value))  # 15 -> 15.0
            if spec.kind == "str_list" and override is not None and isinstance(override.value, str):
                overrides[spec.name] = Parameter(spec.name, value=[override.value])  # one topic -> [topic]
            default = list(spec.default) if isinstance(spec.default, list) else spec.default
            try:
                values[spec.name] = self.declare_parameter(spec.name, default, _descriptor(spec)).value
            except (InvalidParameterTypeException, InvalidParameterValueException, TypeError, ValueError) as error:
                given = overrides[spec.name].value if spec.name in overrides else default
                problems.append(spec_problem(spec, given) or f"{spec.name}: {given!r}: {error}")
                values[spec.name] = self.declare_parameter(spec.name, default, _descriptor(spec),
                                                           ignore_override=True).value
        known = set(PARAMETERS_BY_NAME) | {"use_sim_time", "start_type_description_service"}
        unknown = sorted(name for name in overrides if name not in known and not name.startswith("qos_overrides."))
        if unknown:
            _log_warning(self.get_logger(), "ignoring unknown parameter(s) (typo?): " + ", ".join(unknown))
        values = {k: (list(v) if isinstance(v, (list, tuple, array.array)) else v) for k, v in values.items()}
        try:
            checked = validate_parameters(values)
        except ParameterError as error:  # every problem at once: the declaration ones and the rest
            problems += [problem for problem in error.problems if problem not in problems]
        if problems:
            raise StartupError(self._parameter_error(problems), EXIT_BAD_PARAMETERS)
        return checked

    def _parameter_error(self, problems: list[str]) -> str:
        return (f"invalid parameter(s) for {self.get_name()}:\n  " + "\n  ".join(problems)
                + "\n(see `python -m agegender_ros.node --help` or docs/ros.md for the allowed values)")

    def _create_estimator(self):
        p = self.params
        try:
            from agegender_ros.backends import BackendUnavailable, create_backend
            from agegender_ros.estimator import Estimator
            from agegender_ros.faces import AUTO_ORDER, DETECTORS, DetectorUnavailable
            from agegender_ros.weights import WeightsError, default_weights_path
        except ImportError as error:
            raise StartupError(f"cannot import the estimator ({error}); is the package installed "
                               "with its dependencies (numpy, opencv, torch, onnxruntime)?") from error
        reasons = []
        detector = None
        for name in (AUTO_ORDER if p["detector"] == "auto" else (p["detector"],)):
            try:
                detector = DETECTORS[name](**detector_options(name, p["detector_input_size"], p["score_threshold"],
                                                              p["num_threads"], p["min_face_size"]))
                break
            except DetectorUnavailable as error:
                reasons.append(f"{name}: {error}")
        if detector is None:
            raise StartupError("no face detector available:\n  " + "\n  ".join(reasons))
        if reasons:
            self.get_logger().info("face detector %s (skipped %s)" % (detector.name, "; ".join(reasons)))

        weights = os.path.expanduser(p["weights"]) if p["weights"] else None
        backend, reasons = None, []
        for name in (("tensorrt", "onnxruntime", "torch") if p["backend"] == "auto" else (p["backend"],)):
            try:
                backend = create_backend(name, weights, engine=p["engine"] or None, threads=p["num_threads"])
                break
            except WeightsError as error:
                raise StartupError(f"weights: {error}") from error
            except (BackendUnavailable, ImportError) as error:
                if p["backend"] != "auto":
                    raise StartupError(f"backend {name} is not available: {error}") from error
                reasons.append(f"{name}: {error}")
        if backend is None:
            raise StartupError("no network backend available:\n  " + "\n  ".join(reasons))
        if backend.name == "torch" and p["num_threads"]:
            import torch

            torch.set_num_threads(p["num_threads"])
        self.weights_path = weights or str(default_weights_path())
        providers = getattr(backend, "providers", None)
        self.get_logger().info(
            f"detector {detector.name} (input {p['detector_input_size']}), backend {backend.name}"
            + (f" {providers}" if providers else "")
            + (f" (skipped {'; '.join(reasons)})" if reasons else "") + f", weights {self.weights_path}")
        return Estimator(detector, backend, max_faces=p["max_faces"], min_face_size=float(p["min_face_size"]),
                         flip_tta=bool(p["flip_tta"]))

    def _setup_io(self) -> None:
        p = self.params
        raw_topics, compressed_topics = split_topics(p)
        self._track_ids = TrackIds()
        self._decode_throttle = Throttle(p["warn_throttle_s"])
        self._failure_throttle = Throttle(p["warn_throttle_s"])
        for topic, compressed in [(t, False) for t in raw_topics] + [(t, True) for t in compressed_topics]:
            tracker = FaceTracker(p["track_iou_threshold"], p["smoothing"], p["track_max_missed"],
                                  self._track_ids) if p["tracking"] else None
            slot = _Input(topic, compressed, tracker)
            self._inputs.append(slot)
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     lambda msg, slot=slot: self._on_image(slot, msg), INPUT_QOS)
        self._detections_pub = self.create_publisher(AgeGenderArray, p["detections_topic"], DETECTIONS_QOS)
        self._debug_pub = (self.create_publisher(Image, p["debug_image_topic"], DEBUG_IMAGE_QOS)
                           if p["publish_debug_image"] else None)
        self._vision_pub = None
        if p["publish_vision_msgs"]:
            if vision_msgs is not None:
                self._vision_pub = self.create_publisher(vision_msgs.Detection2DArray, p["vision_msgs_topic"],
                                                         DETECTIONS_QOS)
            else:
                self.get_logger().info("vision_msgs is not installed: no Detection2DArray output")
        self._bridge = CvBridge() if CvBridge is not None else None
        self._diag_pub = None
        if p["diagnostics_period_s"] > 0:
            if DiagnosticArray is not None:
                self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
                self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
            else:
                self.get_logger().info("diagnostic_msgs is not installed: no diagnostics")
        inputs = ", ".join(f"{s.topic} ({'CompressedImage' if s.compressed else 'Image'})" for s in self._inputs)
        self.get_logger().info(f"reading {inputs}; publishing {p['detections_topic']}"
                               + (f", {p['debug_image_topic']}" if self._debug_pub else "")
                               + (f", {p['vision_msgs_topic']}" if self._vision_pub else "")
                               + (f", {DIAGNOSTICS_TOPIC}" if self._diag_pub else ""))

    # ------------------------------------------------------------------------------------------ callbacks

    def _on_image(self, slot: _Input, msg) -> None:
        """Subscription callback: keep only the newest message per topic; the worker does the rest."""
        with self._cond:
            if slot.pending is not None:
                slot.dropped += 1
                self.stats["dropped"] += 1
            slot.pending = (msg, time.monotonic())
            slot.received += 1
            self.stats["received"] += 1
            self._period.received += 1
            self._cond.notify()

    def _take(self, timeout: float):
        """The newest pending message of the next topic (round robin), or None after `timeout`."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not self._stop.is_set():
                count = len(self._inputs)
                for k in range(count):
                    slot = self._inputs[(self._next_input + k) % count]
                    if slot.pending is not None:
                        self._next_input = (self._next_input + k + 1) % count
                        item, slot.pending = slot.pending, None
                        return slot, item[0], item[1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def _work(self) -> None:
        min_period = 1.0 / self.params["max_rate_hz"] if self.params["max_rate_hz"] > 0 else 0.0
        while not self._stop.is_set():
            if min_period:
                wait = self._last_start + min_period - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            item = self._take(0.2)
            if item is None:
                continue
            self._last_start = time.monotonic()
            try:
                self._process(*item)
            except Exception as error:  # never let the worker die
                self._count_failure(item[0], f"{type(error).__name__}: {error}")

    # ------------------------------------------------------------------------------------------ processing

    def _decode(self, slot: _Input, msg) -> np.ndarray:
        if slot.compressed:
            if self._bridge is not None and not msg.data:
                raise ImageDecodeError("compressed image has no data")
            return decode_compressed(msg.format, msg.data)
        try:
            return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
        except ImageDecodeError as error:
            if self._bridge is None or not str(error).startswith("unsupported encoding"):
                raise
        # An encoding only cv_bridge knows (Bayer, 16-bit colour, ...): check the geometry, then let it convert.
        if not 0 < msg.height * msg.width <= 40_000_000 or msg.step < msg.width \
                or len(msg.data) < msg.step * msg.height:
            raise ImageDecodeError(f"{msg.encoding}: inconsistent size {msg.width}x{msg.height}, step {msg.step}, "
                                   f"{len(msg.data)} bytes")
        try:
            frame = self._bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8")
        except Exception as error:
            raise ImageDecodeError(f"cv_bridge cannot convert {msg.encoding!r}: {error}") from error
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _count_failure(self, slot: _Input, text: str) -> None:
        with self._lock:
            self.stats["failures"] += 1
            self._period.errors += 1
        held = self._failure_throttle.check()
        if held is not None:
            self.get_logger().error(f"{slot.topic}: processing a frame failed: {text}"
                                    + (f" ({held} more failures suppressed)" if held else ""))

    def _process(self, slot: _Input, msg, received_at: float) -> None:
        try:
            frame = self._decode(slot, msg)
        except Exception as error:  # ImageDecodeError, or anything a malformed message provokes
            with self._lock:
                self.stats["decode_errors"] += 1
                self._period.errors += 1
            held = self._decode_throttle.check()
            if held is not None:
                reason = str(error) if isinstance(error, ImageDecodeError) else f"{type(error).__name__}: {error}"
                _log_warning(self.get_logger(), f"{slot.topic}: skipping a malformed image: {reason}"
                             + (f" ({held} more malformed images skipped since the last warning)" if held else ""))
            return
        try:
            faces = self.estimator(frame)
            tracked = slot.tracker.update(faces) if slot.tracker is not None else untracked(faces)
        except Exception as error:
            self._count_failure(slot, f"{type(error).__name__}: {error}")
            return
        height, width = frame.shape[:2]
        self._detections_pub.publish(faces_to_message(msg.header, tracked, width, height))
        done = time.monotonic()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        latency_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6 if stamp_ns > 0 else None
        with self._lock:
            self.stats["processed"] += 1
            self.stats["faces"] += len(tracked)
            self._period.processed += 1
            self._period.processing_ms.append((done - received_at) * 1000.0)
            if latency_ms is not None:
                self._period.latency_ms.append(latency_ms)
        if self._vision_pub is not None:
            self._vision_pub.publish(detection2d_array(vision_msgs, msg.header, tracked))
        if self._debug_pub is not None and _subscriber_count(self, self._debug_pub, self.params["debug_image_topic"]):
            from agegender_ros.estimator import draw_estimates

            labels = [(f"#{f.track_id} " if f.track_id else "") + f"{f.age:.0f} {f.gender[0].upper()}"
                      for f in tracked]
            self._debug_pub.publish(image_message(encode_raw(draw_estimates(frame, tracked, labels)), msg.header))

    # ------------------------------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            period, self._period = self._period, _Period()
            elapsed, self._period_start = max(now - self._period_start, 1e-6), now
            totals = dict(self.stats)
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: age/gender"
        status.hardware_id = self.get_namespace().rstrip("/") + "/" + self.get_name()
        rate = period.processed / elapsed

        def pct(values, q):
            return f"{float(np.percentile(values, q)):.1f}" if values else "n/a"

        worker_alive = self._worker is not None and self._worker.is_alive()
        if not worker_alive:
            status.level, status.message = DiagnosticStatus.ERROR, "worker thread stopped"
        elif period.received == 0:
            status.level = DiagnosticStatus.WARN
            status.message = "no images received on " + ", ".join(s.topic for s in self._inputs)
        elif period.errors:
            status.level = DiagnosticStatus.WARN
            status.message = f"{period.errors} malformed or failed frame(s); {rate:.1f} frames/s"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"{rate:.1f} frames/s, latency p50 {pct(period.latency_ms, 50)} ms"
        values = [
            ("rate_hz", f"{rate:.2f}"),
            ("input_rate_hz", f"{period.received / elapsed:.2f}"),
            ("latency_ms_p50", pct(period.latency_ms, 50)),
            ("latency_ms_p99", pct(period.latency_ms, 99)),
            ("latency_ms_max", f"{max(period.latency_ms):.1f}" if period.latency_ms else "n/a"),
            ("processing_ms_p50", pct(period.processing_ms, 50)),
            ("frames_received", str(totals["received"])),
            ("frames_processed", str(totals["processed"])),
            ("frames_dropped", str(totals["dropped"])),
            ("malformed_images", str(totals["decode_errors"])),
            ("failed_frames", str(totals["failures"])),
            ("faces", str(totals["faces"])),
            ("detector", getattr(self.estimator.detector, "name", "?")),
            ("backend", getattr(self.estimator.backend, "name", "?")),
        ]
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        out = DiagnosticArray()
        out.header.stamp = self.get_clock().now().to_msg()
        out.status = [status]
        self._diag_pub.publish(out)

    # ------------------------------------------------------------------------------------------ shutdown

    def destroy_node(self):
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10.0)
        return super().destroy_node()


# --------------------------------------------------------------------------------------------------------------
# Entry point


def _try_shutdown(context=None) -> None:
    try:
        if context is None:
            if rclpy.ok():
                rclpy.shutdown()
        elif context.ok():
            rclpy.shutdown(context=context)
    except Exception:  # already shut down (e.g. by a signal)
        pass


def main(argv: list | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    from rclpy.utilities import remove_ros_args

    own = remove_ros_args(args=argv)[1:]
    if own:
        if own[0] in ("-h", "--help"):
            print(__doc__.split("\n\n")[0] + "\n")
            print(parameters_help())
            return 0
        print(f"agegender_node: unexpected argument(s) {own}; node parameters go after --ros-args "
              "(see --help)", file=sys.stderr)
        return EXIT_BAD_PARAMETERS
    rclpy.init(args=argv)
    node = None
    try:
        node = AgeGenderNode()
        rclpy.spin(node)
    except StartupError as error:
        node = None  # destroyed already
        print(f"agegender_node: {'invalid parameters' if error.exit_code == EXIT_BAD_PARAMETERS else 'error'}, "
              "exiting", file=sys.stderr)
        _try_shutdown()
        return error.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A second Ctrl-C (or SIGINT sent to the whole process group, as `timeout` and some launchers do) must
        # not interrupt the clean-up; SIGTERM / SIGKILL still end the process.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        _try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

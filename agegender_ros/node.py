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
import collections
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def _help_without_ros() -> None:
    """`python -m agegender_ros.node --help` lists the parameters before rclpy and the generated messages are
    imported: it works in a bare Python environment, without ROS or a colcon build."""
    if __name__ == "__main__" and sys.argv[1:2] in (["-h"], ["--help"]):
        from agegender_ros.launch_args import parameters_help

        print(__doc__.split("\n\n")[0] + "\n")
        print(parameters_help())
        sys.exit(0)


_help_without_ros()

import numpy as np  # noqa: E402 (after the ROS-free --help)
import rclpy  # noqa: E402
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from agegender_ros.launch_args import NODE_PARAMETERS, PARAMETERS_BY_NAME, ParameterError, ParamSpec, \
    detector_options, parameters_help, spec_problem, split_topics, validate_parameters
try:
    from agegender_ros.msg import AgeGender, AgeGenderArray
except ImportError as _error:  # the generated half of the package is missing
    raise ImportError(f"agegender_ros.msg is not importable ({_error}): build the package with colcon and "
                      "`source install/setup.bash` first") from _error
from agegender_ros.message_fields import agegender_fields
from agegender_ros.ros_image import ImageDecodeError, ImageTooLarge, RawImage, check_image_size, \
    decode_compressed, decode_raw, encode_raw
from agegender_ros.tracking import FaceTracker, TrackIds, untracked

try:  # Humble and later: a managed (lifecycle) node
    from rclpy.lifecycle import LifecycleNode as _NodeBase
    from rclpy.lifecycle import TransitionCallbackReturn
    LIFECYCLE = True
except ImportError:  # Foxy, Galactic: a plain node that configures and activates itself
    _NodeBase = Node
    LIFECYCLE = False

    class TransitionCallbackReturn:  # type: ignore[no-redef]
        SUCCESS, FAILURE, ERROR = "success", "failure", "error"

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
    constraints.append("live: `ros2 param set` applies it from the next frame" if spec.live else
                       "set only while unconfigured (lifecycle: deactivate, cleanup, set, configure, activate)")
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


# --------------------------------------------------------------------------------------------------------------
# The node


class _CountingDetector:
    """The estimator's face detector, counting the faces it found that are at least min_face_size: the node
    compares that with the faces it reports, to say when max_faces left some out."""

    def __init__(self, inner, estimator):
        self.inner, self._estimator = inner, estimator
        self.found = 0

    def detect(self, frame_bgr):
        detections = self.inner.detect(frame_bgr)
        floor = float(getattr(self._estimator, "min_face_size", 0.0))
        self.found = sum(1 for d in detections if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= floor)
        return detections

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclass
class _Input:
    topic: str
    compressed: bool
    tracker: FaceTracker | None
    pending: Any = None  # (message, monotonic receive time) not yet taken by the worker
    received: int = 0
    dropped: int = 0
    # (arrival time, header stamp in ns) of the large raw frames received lately: arrival_fraction() judges from
    # the stamps whether the publisher's frames get lost on the way (UDP fragments of frames too large for Fast
    # DDS's shared memory).
    stamps: Any = field(default_factory=lambda: collections.deque(maxlen=300))


# A raw frame at least this large crosses between processes as several UDP fragments unless both sides use the
# shared-memory profile (Fast DDS's default segment holds no 640x480 bgr8 frame).
LARGE_FRAME_BYTES = 65536


def arrival_fraction(stamps_ns) -> tuple[float, float] | None:
    """(fraction of a camera's frames that arrived, its frame period in seconds), judged from the header stamps of
    the frames that did arrive: a camera stamps its frames at a steady period, so the stamps' span holds
    span / period frames, of which those seen arrived. The period is the typical short gap (the median of the
    gaps up to 1.5 x their lower quartile: lost frames only make gaps longer, jitter averages out). None with
    fewer than 20 stamps, or when most gaps are not near a whole number of periods (not a camera: no judgement).
    """
    stamps = np.unique(np.asarray(list(stamps_ns), dtype=np.int64))
    if len(stamps) < 20:
        return None
    gaps = np.diff(stamps).astype(np.float64)
    short = gaps[gaps <= 1.5 * np.percentile(gaps, 25)]
    period = float(np.median(short)) if len(short) else 0.0
    if period <= 0:
        return None
    ratio = gaps / period
    if np.mean(np.abs(ratio - np.maximum(1, np.rint(ratio))) < 0.3) < 0.7:
        return None
    expected = (stamps[-1] - stamps[0]) / period + 1
    return float(min(1.0, len(stamps) / expected)), period / 1e9


def _profile_hint() -> str:
    """The one line a user exports before starting a camera driver elsewhere, to get full-size frames through."""
    from agegender_ros.launch_args import DDS_PROFILE_FILE, uses_fast_dds

    if not uses_fast_dds(os.environ):
        return ("the RMW drops large frames between processes: check its transport settings "
                "(docs/ros.md#large-raw-images-between-processes-fast-dds)")
    path = os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    if not path:
        try:
            from ament_index_python.packages import get_package_share_directory

            path = os.path.join(get_package_share_directory("agegender_ros"), "config", DDS_PROFILE_FILE)
        except Exception:
            path = f"<agegender_ros share>/config/{DDS_PROFILE_FILE}"
    return (f"start the camera driver with the same Fast DDS shared-memory profile as this node: export "
            f"FASTRTPS_DEFAULT_PROFILES_FILE={path} FASTDDS_DEFAULT_PROFILES_FILE={path} "
            "(`source scripts/ros_shell.sh` does it)")


@dataclass
class _Period:
    """Counters of one diagnostics period."""

    received: int = 0
    processed: int = 0
    errors: int = 0
    latency_ms: list = field(default_factory=list)  # image stamp -> detections published
    processing_ms: list = field(default_factory=list)  # message received -> detections published


class AgeGenderNode(_NodeBase):
    """Faces -> age, gender and track id on AgeGenderArray: a managed (lifecycle) node where rclpy has them.

    configure: checks the parameters, loads the weights, builds the detector and the network backend;
    activate: creates the subscriptions, publishers and timers and starts the worker thread; deactivate: stops
    and removes them (no callbacks, no CPU spent on frames); cleanup: frees the model; shutdown: from any state.
    With `autostart` (the default) the constructor runs configure and activate itself and raises StartupError
    (logged) when configure fails, as the node did before it had a lifecycle. Parameters marked `live` in
    launch_args.NODE_PARAMETERS can be set at any time and apply from the next frame; the others only while
    unconfigured. Without rclpy.lifecycle (Foxy, Galactic) it is a plain node that starts active.
    """

    def __init__(self, node_name: str = NODE_NAME, *, context=None, parameter_overrides: list | None = None,
                 estimator=None, **node_kwargs):
        super().__init__(node_name, context=context, parameter_overrides=parameter_overrides, **node_kwargs)
        self._given_estimator = estimator
        self._stop = threading.Event()
        self._cond = threading.Condition(threading.Lock())
        self._lock = self._cond  # one lock for the frame slots and the counters
        self._worker: threading.Thread | None = None
        self._period = _Period()
        self._period_start = time.monotonic()
        self.stats = {"received": 0, "processed": 0, "dropped": 0, "decode_errors": 0, "oversized": 0,
                      "failures": 0, "faces": 0, "faces_cut": 0}
        self._inputs: list = []
        self._next_input = 0
        self._last_start = -math.inf
        self.params: dict | None = None  # the checked parameters while configured
        self.estimator = None
        self.state = "unconfigured"  # unconfigured | inactive | active | finalized
        self.finalized = threading.Event()
        self._startup_error: StartupError | None = None
        self._io: list = []  # subscriptions, publishers and timers of the active state
        self._detections_pub = self._debug_pub = self._vision_pub = self._diag_pub = None
        self._diag_timer = None
        self._bridge = None
        self._decode_throttle = self._failure_throttle = self._size_throttle = self._cut_throttle = Throttle(5.0)
        self._loss_throttle = Throttle(30.0)
        self._declaration_problems: dict = {}
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if LIFECYCLE and not self.get_parameter("autostart").value:
            self.get_logger().info(f"unconfigured; waiting for `ros2 lifecycle set {self._full_name()} "
                                   "configure` (then activate)")
            return
        if not LIFECYCLE and not self.get_parameter("autostart").value:
            _log_warning(self.get_logger(), "autostart is false, but this rclpy has no lifecycle nodes "
                         "(rclpy.lifecycle: Humble and later): starting active")
        try:
            self._start_up()
        except StartupError as error:
            self.destroy_node()
            raise error

    def _full_name(self) -> str:
        """/namespace/name (Node.get_fully_qualified_name is not in every rclpy this node runs on)."""
        return self.get_namespace().rstrip("/") + "/" + self.get_name()

    # ---------------------------------------------------------------------------------------------- lifecycle

    def _start_up(self) -> None:
        """configure + activate (autostart). Raises the StartupError of a failed configure (already logged)."""
        if LIFECYCLE:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise self._startup_error or StartupError("configure failed")
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise StartupError("activate failed")
            return
        try:
            self._configure()
        except StartupError as error:
            self.get_logger().error(str(error))
            raise
        self._activate()

    def on_configure(self, state) -> "TransitionCallbackReturn":
        self._startup_error = None
        try:
            self._configure()
        except Exception as error:  # rclpy would turn an exception into a silent ERROR transition
            if not isinstance(error, StartupError):
                error = StartupError(f"configure failed: {type(error).__name__}: {error}")
            self._startup_error = error
            self.get_logger().error(str(error))
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> "TransitionCallbackReturn":
        try:
            self._activate()
        except Exception as error:  # e.g. a topic the RMW refuses: said, and the node stays inactive
            self.get_logger().error(f"activate failed: {type(error).__name__}: {error}")
            self._deactivate()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> "TransitionCallbackReturn":
        self._deactivate()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> "TransitionCallbackReturn":
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> "TransitionCallbackReturn":
        self._deactivate()
        self._cleanup()
        self.state = "finalized"
        self.finalized.set()
        self.get_logger().info("shut down (finalized)")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> "TransitionCallbackReturn":
        self._deactivate()
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured

    def _configure(self) -> None:
        self.params = self._read_parameters()
        self.estimator = self._given_estimator or self._create_estimator()
        if hasattr(self.estimator, "detector") and not isinstance(self.estimator.detector, _CountingDetector):
            self.estimator.detector = _CountingDetector(self.estimator.detector, self.estimator)
        self._bridge = CvBridge() if CvBridge is not None else None
        period = self.params["warn_throttle_s"]
        self._decode_throttle, self._failure_throttle, self._size_throttle, self._cut_throttle = (
            Throttle(period) for _ in range(4))
        self._track_ids = TrackIds()
        self.state = "inactive"

    def _activate(self) -> None:
        if self.state != "inactive":
            return
        p = self.params
        raw_topics, compressed_topics = split_topics(p)
        self._stop.clear()
        self._inputs = []
        for topic, compressed in [(t, False) for t in raw_topics] + [(t, True) for t in compressed_topics]:
            slot = _Input(topic, compressed, self._new_tracker() if p["tracking"] else None)
            self._inputs.append(slot)
            self._io.append(self.create_subscription(CompressedImage if compressed else Image, topic,
                                                     lambda msg, slot=slot: self._on_image(slot, msg), INPUT_QOS))
        self._detections_pub = self.create_publisher(AgeGenderArray, p["detections_topic"], DETECTIONS_QOS)
        self._io.append(self._detections_pub)
        self._sync_optional_outputs()
        with self._lock:
            self._period, self._period_start = _Period(), time.monotonic()
        self._worker = threading.Thread(target=self._work, name="agegender_worker", daemon=True)
        self._worker.start()
        self.state = "active"
        inputs = ", ".join(f"{s.topic} ({'CompressedImage' if s.compressed else 'Image'})" for s in self._inputs)
        self.get_logger().info(f"reading {inputs}; publishing {p['detections_topic']}"
                               + (f", {p['debug_image_topic']}" if self._debug_pub else "")
                               + (f", {p['vision_msgs_topic']}" if self._vision_pub else "")
                               + (f", {DIAGNOSTICS_TOPIC}" if self._diag_pub else ""))

    def _sync_optional_outputs(self) -> None:
        """Debug image, Detection2DArray and diagnostics outputs as the (live) parameters say, while active. A
        publisher switched off is only dropped from use here; it is destroyed at deactivate, so the worker never
        publishes on a destroyed one."""
        p = self.params
        if p["publish_debug_image"] and self._debug_pub is None:
            self._debug_pub = self.create_publisher(Image, p["debug_image_topic"], DEBUG_IMAGE_QOS)
            self._io.append(self._debug_pub)
        elif not p["publish_debug_image"]:
            self._debug_pub = None
        if p["publish_vision_msgs"] and self._vision_pub is None:
            if vision_msgs is not None:
                self._vision_pub = self.create_publisher(vision_msgs.Detection2DArray, p["vision_msgs_topic"],
                                                         DETECTIONS_QOS)
                self._io.append(self._vision_pub)
            else:
                self.get_logger().info("vision_msgs is not installed: no Detection2DArray output")
        elif not p["publish_vision_msgs"]:
            self._vision_pub = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if p["diagnostics_period_s"] > 0:
            if DiagnosticArray is None:
                self.get_logger().info("diagnostic_msgs is not installed: no diagnostics")
            else:
                if self._diag_pub is None:
                    self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
                    self._io.append(self._diag_pub)
                self._diag_timer = self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)

    def _deactivate(self) -> None:
        """Stop the worker, then remove every subscription, publisher and timer: nothing runs while inactive."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10.0)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for entity in self._io:
            try:
                if hasattr(entity, "publish"):
                    self.destroy_publisher(entity)
                else:
                    self.destroy_subscription(entity)
            except Exception:  # already gone (node shutting down)
                pass
        self._io = []
        self._detections_pub = self._debug_pub = self._vision_pub = self._diag_pub = None
        with self._cond:
            self._inputs = []  # frames not yet processed are dropped
        if self.state == "active":
            self.state = "inactive"

    def _cleanup(self) -> None:
        """Free the model and the detector (and give the freed heap back to the system)."""
        self.estimator = None
        self.params = None
        self._bridge = None
        if self.state in ("inactive", "active"):
            self.state = "unconfigured"
        import gc

        gc.collect()
        _trim_heap()

    # ---------------------------------------------------------------------------------------------- parameters

    def _declare_parameters(self) -> None:
        """Declare every parameter (descriptions and ranges for `ros2 param describe`). A value of the wrong type
        cannot be declared: the default takes its place and the problem is reported by configure."""
        overrides = getattr(self, "_parameter_overrides", {})
        for spec in NODE_PARAMETERS:
            override = overrides.get(spec.name)
            if spec.kind == "float" and override is not None and isinstance(override.value, int) \
                    and not isinstance(override.value, bool):
                overrides[spec.name] = Parameter(spec.name, value=float(override.value))  # 15 -> 15.0
            if spec.kind == "str_list" and override is not None and isinstance(override.value, str):
                overrides[spec.name] = Parameter(spec.name, value=[override.value])  # one topic -> [topic]
            default = list(spec.default) if isinstance(spec.default, list) else spec.default
            try:
                self.declare_parameter(spec.name, default, _descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException, TypeError, ValueError) as error:
                given = overrides[spec.name].value if spec.name in overrides else default
                self._declaration_problems[spec.name] = spec_problem(spec, given) or f"{spec.name}: {given!r}: {error}"
                self.declare_parameter(spec.name, default, _descriptor(spec), ignore_override=True)
        known = set(PARAMETERS_BY_NAME) | {"use_sim_time", "start_type_description_service"}
        unknown = sorted(name for name in overrides if name not in known and not name.startswith("qos_overrides."))
        if unknown:
            _log_warning(self.get_logger(), "ignoring unknown parameter(s) (typo?): " + ", ".join(unknown))

    def _current_values(self) -> dict:
        values = {spec.name: self.get_parameter(spec.name).value for spec in NODE_PARAMETERS}
        return {k: (list(v) if isinstance(v, (list, tuple, array.array)) else v) for k, v in values.items()}

    def _read_parameters(self) -> dict:
        problems = list(self._declaration_problems.values())
        checked = None
        try:
            checked = validate_parameters(self._current_values())
        except ParameterError as error:  # every problem at once: the declaration ones and the rest
            problems += [problem for problem in error.problems if problem not in problems]
        if problems:
            raise StartupError(self._parameter_error(problems), EXIT_BAD_PARAMETERS)
        return checked

    def _parameter_error(self, problems: list[str]) -> str:
        return (f"invalid parameter(s) for {self.get_name()}:\n  " + "\n  ".join(problems)
                + "\n(see `python -m agegender_ros.node --help` or docs/ros.md for the allowed values)")

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """`ros2 param set`: the start-up checks for each value; a parameter that is not live only while
        unconfigured. An accepted live value applies from the next frame; a rejected one keeps the old value."""
        problems, changes = [], {}
        for parameter in parameters:
            spec = PARAMETERS_BY_NAME.get(parameter.name)
            if spec is None:
                continue
            value = parameter.value
            if isinstance(value, (tuple, array.array)):
                value = list(value)
            if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            problem = spec_problem(spec, value)
            if problem is None and not spec.live and self.state != "unconfigured":
                problem = (f"{spec.name} cannot change while the node is {self.state} (it is used by configure): "
                           "deactivate and clean up the node, set it, then configure and activate")
            if problem:
                problems.append(problem)
            else:
                changes[spec.name] = value
        if changes and not problems:
            merged = dict(self._current_values(), **changes)
            try:
                validate_parameters(merged, check_files=any(n in changes for n in ("weights", "engine")))
            except ParameterError as error:
                problems += [p for p in error.problems if any(name in p for name in changes)]
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        for name in changes:
            self._declaration_problems.pop(name, None)
        if self.params is not None and changes:
            self._apply_live(changes)
        return SetParametersResult(successful=True)

    def _apply_live(self, changes: dict) -> None:
        p = self.params
        p.update(changes)
        estimator = self.estimator
        if estimator is not None:
            detector = getattr(estimator.detector, "inner", estimator.detector)
            if "score_threshold" in changes and hasattr(detector, "score_threshold"):
                detector.score_threshold = float(changes["score_threshold"])
            if "min_face_size" in changes:
                estimator.min_face_size = float(changes["min_face_size"])
                if hasattr(detector, "_min_size"):  # Haar's own minimum
                    detector._min_size = max(24, int(changes["min_face_size"]))
            if "max_faces" in changes:
                estimator.max_faces = int(changes["max_faces"])
            if "flip_tta" in changes:
                estimator.flip_tta = bool(changes["flip_tta"])
        if "warn_throttle_s" in changes:
            for throttle in (self._decode_throttle, self._failure_throttle, self._size_throttle, self._cut_throttle):
                throttle.period_s = float(changes["warn_throttle_s"])
        if {"tracking", "smoothing", "track_max_missed", "track_iou_threshold"} & set(changes):
            for slot in list(self._inputs):
                if not p["tracking"]:
                    slot.tracker = None
                elif slot.tracker is None:
                    slot.tracker = self._new_tracker()
                else:
                    slot.tracker.smoothing = float(p["smoothing"])
                    slot.tracker.max_missed = int(p["track_max_missed"])
                    slot.tracker.iou_threshold = float(p["track_iou_threshold"])
        if self.state == "active" and {"publish_debug_image", "publish_vision_msgs", "diagnostics_period_s"} & \
                set(changes):
            self._sync_optional_outputs()
        self.get_logger().info("set " + ", ".join(f"{k} = {v!r}" for k, v in changes.items())
                               + " (applies from the next frame)")

    def _new_tracker(self) -> FaceTracker:
        p = self.params
        return FaceTracker(p["track_iou_threshold"], p["smoothing"], p["track_max_missed"], self._track_ids)

    # ---------------------------------------------------------------------------------------------- start-up

    def _create_estimator(self):
        p = self.params
        try:
            from agegender_ros.backends import BackendUnavailable, create_backend
            from agegender_ros.estimator import Estimator
            from agegender_ros.faces import AUTO_ORDER, DETECTORS, DetectorUnavailable, auto_detector_notice
            from agegender_ros.weights import WeightsError, crop_scale, default_weights_path, read_card
        except ImportError as error:
            raise StartupError(f"cannot import the estimator ({error}); is the package installed "
                               "with its dependencies (`pip install .`: numpy, opencv, onnxruntime)?") from error
        skipped = {}
        detector = None
        for name in (AUTO_ORDER if p["detector"] == "auto" else (p["detector"],)):
            try:
                detector = DETECTORS[name](**detector_options(name, p["detector_input_size"], p["score_threshold"],
                                                              p["num_threads"], p["min_face_size"]))
                break
            except DetectorUnavailable as error:
                skipped[name] = str(error)
        reasons = [f"{name}: {reason}" for name, reason in skipped.items()]
        if detector is None:
            raise StartupError("no face detector available:\n  " + "\n  ".join(reasons))
        # `auto` without the best detector (SCRFD): which one it took, why, and the command that fetches SCRFD.
        notice = auto_detector_notice(detector.name, skipped) if p["detector"] == "auto" else None
        if notice:
            _log_warning(self.get_logger(), notice)
        elif reasons:
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
        # Faces are cropped as the weights were trained (create_backend has checked the files and the card).
        scale = crop_scale(read_card(self.weights_path))
        providers = getattr(backend, "providers", None)
        self.get_logger().info(
            f"detector {detector.name} (input {p['detector_input_size']}), backend {backend.name}"
            + (f" {providers}" if providers else "")
            + (f" (skipped {'; '.join(reasons)})" if reasons else "")
            + f", weights {self.weights_path} (crop scale {scale:g})")
        return Estimator(detector, backend, max_faces=p["max_faces"], min_face_size=float(p["min_face_size"]),
                         flip_tta=bool(p["flip_tta"]), crop_scale=scale)

    # ------------------------------------------------------------------------------------------ callbacks

    def _on_image(self, slot: _Input, msg) -> None:
        """Subscription callback: keep only the newest message per topic; the worker does the rest."""
        with self._cond:
            if slot.pending is not None:
                slot.dropped += 1
                self.stats["dropped"] += 1
            now = time.monotonic()
            slot.pending = (msg, now)
            if not slot.compressed and len(msg.data) >= LARGE_FRAME_BYTES:
                slot.stamps.append((now, stamp_to_ns(msg.header.stamp)))
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
        params = self.params
        while not self._stop.is_set():
            rate = params["max_rate_hz"]  # live: read for every frame
            min_period = 1.0 / rate if rate > 0 else 0.0
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

    def _decode(self, slot: _Input, msg, max_pixels: int) -> np.ndarray:
        if slot.compressed:
            if self._bridge is not None and not msg.data:
                raise ImageDecodeError("compressed image has no data")
            return decode_compressed(msg.format, msg.data, max_pixels=max_pixels)
        try:
            return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                              max_pixels=max_pixels)
        except ImageDecodeError as error:
            if self._bridge is None or not str(error).startswith("unsupported encoding"):
                raise
        # An encoding only cv_bridge knows (Bayer, 16-bit colour, ...): check the geometry, then let it convert.
        check_image_size(int(msg.height), int(msg.width), max_pixels)
        if msg.step < msg.width or len(msg.data) < msg.step * msg.height:
            raise ImageDecodeError(f"{msg.encoding}: inconsistent size {msg.width}x{msg.height}, step {msg.step}, "
                                   f"{len(msg.data)} bytes")
        try:
            frame = self._bridge.imgmsg_to_cv2(msg, desired_encoding="bgr8")
        except Exception as error:
            raise ImageDecodeError(f"cv_bridge cannot convert {msg.encoding!r}: {error}") from error
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def _report_cut(self, slot: _Input, cut: int, kept: int, max_faces: int) -> None:
        with self._lock:
            self.stats["faces_cut"] += cut
        held = self._cut_throttle.check()
        if held is not None:
            self.get_logger().info(
                f"{slot.topic}: {cut} of {cut + kept} faces left out: max_faces is {max_faces} (the most confident "
                f"are kept; `ros2 param set {self._full_name()} max_faces N` to report more)"
                + (f" ({held} more frames with faces left out since)" if held else ""))

    def _lost_frames(self) -> list:
        """[(topic, fraction arriving, frame period)] for raw inputs whose publisher's frames mostly do not arrive
        (judged from the stamps of the last 10 s), with a throttled warning that says what to do."""
        losing = []
        horizon = time.monotonic() - 10.0
        for slot in list(self._inputs):
            with self._lock:
                recent = [stamp for arrived, stamp in slot.stamps if arrived >= horizon]
            judged = arrival_fraction(recent)
            if judged is not None and judged[0] < 0.8:
                losing.append((slot.topic, judged[0], judged[1]))
        if losing and self._loss_throttle.check() is not None:
            topic, fraction, period = losing[0]
            _log_warning(self.get_logger(), f"{topic}: only {fraction:.0%} of the publisher's frames arrive (its "
                         f"stamps are {period * 1000:.0f} ms apart); large raw images between processes are lost "
                         f"as UDP fragments: {_profile_hint()}")
        return losing

    def _count_failure(self, slot: _Input, text: str) -> None:
        with self._lock:
            self.stats["failures"] += 1
            self._period.errors += 1
        held = self._failure_throttle.check()
        if held is not None:
            self.get_logger().error(f"{slot.topic}: processing a frame failed: {text}"
                                    + (f" ({held} more failures suppressed)" if held else ""))

    def _process(self, slot: _Input, msg, received_at: float) -> None:
        params, estimator = self.params, self.estimator
        if params is None or estimator is None:  # cleaned up meanwhile
            return
        try:
            frame = self._decode(slot, msg, params["max_image_pixels"])
        except ImageTooLarge as error:  # refused from the header alone: nothing was decoded
            with self._lock:
                self.stats["oversized"] += 1
                self._period.errors += 1
            held = self._size_throttle.check()
            if held is not None:
                _log_warning(self.get_logger(), f"{slot.topic}: skipping an image: {error}"
                             + (f" ({held} more too large since the last warning)" if held else ""))
            return
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
        tracker = slot.tracker  # live parameters may swap it
        try:
            faces = estimator(frame)
            tracked = tracker.update(faces) if tracker is not None else untracked(faces)
        except Exception as error:
            self._count_failure(slot, f"{type(error).__name__}: {error}")
            return
        detections_pub, vision_pub, debug_pub = self._detections_pub, self._vision_pub, self._debug_pub
        if detections_pub is None:  # deactivated meanwhile
            return
        cut = getattr(estimator.detector, "found", 0) - len(faces)
        if cut > 0:
            self._report_cut(slot, cut, len(faces), params["max_faces"])
        height, width = frame.shape[:2]
        detections_pub.publish(faces_to_message(msg.header, tracked, width, height))
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
        if vision_pub is not None:
            vision_pub.publish(detection2d_array(vision_msgs, msg.header, tracked))
        if debug_pub is not None and _subscriber_count(self, debug_pub, params["debug_image_topic"]):
            from agegender_ros.estimator import draw_estimates

            labels = [(f"#{f.track_id} " if f.track_id else "") + f"{f.age:.0f} {f.gender[0].upper()}"
                      for f in tracked]
            debug_pub.publish(image_message(encode_raw(draw_estimates(frame, tracked, labels)), msg.header))

    # ------------------------------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        estimator = self.estimator
        now = time.monotonic()
        with self._lock:
            period, self._period = self._period, _Period()
            elapsed, self._period_start = max(now - self._period_start, 1e-6), now
            totals = dict(self.stats)
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: age/gender"
        status.hardware_id = self._full_name()
        rate = period.processed / elapsed

        def pct(values, q):
            return f"{float(np.percentile(values, q)):.1f}" if values else "n/a"

        worker_alive = self._worker is not None and self._worker.is_alive()
        losing = self._lost_frames()
        if not worker_alive:
            status.level, status.message = DiagnosticStatus.ERROR, "worker thread stopped"
        elif losing:
            status.level = DiagnosticStatus.WARN
            status.message = "; ".join(f"only {fraction:.0%} of the frames sent on {topic} arrive"
                                       for topic, fraction, _ in losing)
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
            ("too_large_images", str(totals["oversized"])),
            ("failed_frames", str(totals["failures"])),
            ("faces", str(totals["faces"])),
            ("faces_left_out_by_max_faces", str(totals["faces_cut"])),
            ("frames_arriving_percent", ", ".join(f"{topic} {fraction:.0%}" for topic, fraction, _ in losing)
             or "n/a"),
            ("detector", getattr(getattr(estimator, "detector", None), "name", "?")),
            ("backend", getattr(getattr(estimator, "backend", None), "name", "?")),
        ]
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        out = DiagnosticArray()
        out.header.stamp = self.get_clock().now().to_msg()
        out.status = [status]
        publisher = self._diag_pub
        if publisher is not None:
            publisher.publish(out)

    # ------------------------------------------------------------------------------------------ shutdown

    def destroy_node(self):
        self._deactivate()
        return super().destroy_node()


def _trim_heap() -> None:
    """Give memory freed by the cleanup transition back to the system (glibc keeps it otherwise)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...)
            pass


# --------------------------------------------------------------------------------------------------------------
# Entry point


@contextlib.contextmanager
def sigint_ignored():
    """A clean-up that a second Ctrl-C (or SIGINT sent to the whole process group, as `timeout` and some launchers
    do) must not interrupt; SIGTERM / SIGKILL still end the process. The handler is put back afterwards, for a
    main() called in a process that goes on. Only the main thread can set handlers: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back from here
            signal.signal(signal.SIGINT, previous)


def _try_shutdown(context=None) -> None:
    try:
        if context is None:
            if rclpy.ok():
                rclpy.shutdown()
        elif context.ok():
            rclpy.shutdown(context=context)
    except Exception:  # already shut down (e.g. by a signal)
        pass


def ros_arguments_problem(argv: list, error: Exception) -> str:
    """One line for ROS arguments rcl cannot parse (instead of rclpy's traceback): for a params file, what is wrong
    with it and where; otherwise rcl's message without its source locations."""
    from agegender_ros.launch_args import params_file_problem

    for flag, path in zip(argv, argv[1:]):
        if flag == "--params-file":
            problem = params_file_problem(path)
            if problem:
                return problem.replace("launch argument params_file: ", "--params-file ")
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return "cannot parse the ROS arguments: " + re.sub(r", at /\S+:\d+", "", text)


def exit_with_parent(poll_s: float = 0.5) -> bool:
    """End this process cleanly (rclpy shut down, as by Ctrl-C) when the process that started it goes away.

    `ros2 launch` killed with SIGTERM (or SIGKILL) does not stop the processes it started; without this the
    node went on running under PID 1. A daemon thread polls the parent PID: portable (Linux, macOS; Foxy to
    Jazzy) and, unlike prctl(PR_SET_PDEATHSIG), not fooled by the launching *thread* ending while its process
    lives on. It shuts rclpy down itself rather than signalling: a process started in the background of a
    script runs with SIGINT ignored. Should the clean exit hang, the process ends 10 s later. Not started when
    the node was already orphaned or daemonised at start (parent PID 1), or when AGEGENDER_EXIT_WITH_PARENT=0.
    Returns whether the watch runs.
    """
    parent = os.getppid()
    if parent <= 1 or os.environ.get("AGEGENDER_EXIT_WITH_PARENT", "1").strip() == "0":
        return False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        _try_shutdown()
        try:  # the parent's end of a pipe to stderr may be gone with it
            print(f"agegender_node: the parent process {parent} is gone; shut down", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        time.sleep(10.0)
        os._exit(0)

    threading.Thread(target=watch, name="agegender_parent_watch", daemon=True).start()
    return True


def main(argv: list | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    from rclpy.utilities import remove_ros_args

    try:
        own = remove_ros_args(args=argv)[1:]
    except Exception as error:  # RCLInvalidROSArgsError: e.g. a params file that is not valid YAML
        print(f"agegender_node: {ros_arguments_problem(argv, error)}", file=sys.stderr)
        return EXIT_BAD_PARAMETERS
    if own:
        if own[0] in ("-h", "--help"):
            print(__doc__.split("\n\n")[0] + "\n")
            print(parameters_help())
            return 0
        print(f"agegender_node: unexpected argument(s) {own}; node parameters go after --ros-args "
              "(see --help)", file=sys.stderr)
        return EXIT_BAD_PARAMETERS
    rclpy.init(args=argv)
    exit_with_parent()
    node = None
    try:
        node = AgeGenderNode()
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not node.finalized.is_set():  # `ros2 lifecycle set ... shutdown` ends the process
            executor.spin_once(timeout_sec=0.25)
    except StartupError as error:
        node = None  # destroyed already
        print(f"agegender_node: {'invalid parameters' if error.exit_code == EXIT_BAD_PARAMETERS else 'error'}, "
              "exiting", file=sys.stderr)
        _try_shutdown()
        return error.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # rclpy was shut down (parent gone, SIGTERM) while the node was starting: not an error of the node.
    finally:
        with sigint_ignored():
            if node is not None:
                node.destroy_node()
            _try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

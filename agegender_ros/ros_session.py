"""A small rclpy harness shared by the demo, the node benchmark and the tests: `RosSession` (a private rclpy
context with a background executor) and `Probe` (publishes frames to the node, collects what it publishes).

    from agegender_ros.ros_session import RosSession, private_domain_id

    with RosSession(domain_id=private_domain_id()) as session:
        session.start_node({"weights": path})                    # an AgeGenderNode in this session
        probe = session.probe(debug_image_topic="/agegender/debug_image")
        probe.wait_ready()
        stamp, detections = probe.request(frame_bgr, "bgr8")

ROS-facing (imports rclpy and the messages); the node itself is in agegender_ros.node. Python 3.8 compatible.
"""
from __future__ import annotations

import array
import os
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from agegender_ros.node import DEBUG_IMAGE_QOS, DETECTIONS_QOS, DIAGNOSTICS_QOS, DIAGNOSTICS_TOPIC, NODE_NAME, \
    AgeGenderArray, AgeGenderNode, DiagnosticArray, ExternalShutdownException, StartupError, _subscriber_count, \
    _try_shutdown, image_message, stamp_to_ns
from agegender_ros.ros_image import ImageDecodeError, decode_raw, encode_frame

__all__ = ["RosSession", "Probe", "private_domain_id", "image_message", "compressed_message", "camera_frame",
           "StartupError"]


def compressed_message(frame_bgr: np.ndarray, header: Header | None = None, fmt: str = "jpeg",
                       quality: int = 90) -> CompressedImage:
    """sensor_msgs/CompressedImage (JPEG or PNG) of a BGR frame, `format` as image_transport writes it."""
    import cv2

    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", frame_bgr,
                            [] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the frame")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = f"bgr8; {'png' if fmt == 'png' else 'jpeg'} compressed bgr8"
    msg.data = array.array("B", data.tobytes())
    return msg


def camera_frame() -> np.ndarray:
    """A 640 x 480 bgr8 frame with one face (the bundled astronaut photo, its face around x 245..340, y 60..180),
    as a USB camera would send: what the launch tests and the node benchmark publish."""
    import cv2

    import agegender_ros

    for folder in agegender_ros.__path__:  # the installed package and, with extend_path, the source tree
        photo = cv2.imread(os.path.join(folder, "samples", "astronaut.jpg"))
        if photo is not None:
            frame = np.full((480, 640, 3), 100, np.uint8)
            frame[:, 64:576] = photo[16:496]
            return frame
    raise FileNotFoundError("agegender_ros/samples/astronaut.jpg is not installed")


def private_domain_id() -> int:
    """$ROS_DOMAIN_ID when set, else a random domain id in 1..101.

    A private network namespace does not isolate Fast DDS completely: its shared-memory transport (segments in
    /dev/shm) is shared by every namespace on the host, and two participants with the same domain and
    participant id in different namespaces then disturb each other (messages go missing). Tests, the demo and
    the benchmark therefore also pick their own domain.
    """
    value = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if value.isdigit():
        return int(value)
    import random

    return random.SystemRandom().randint(1, 101)


class RosSession:
    """A private rclpy context with an executor spinning in a background thread. Use as a context manager."""

    def __init__(self, args: list | None = None, domain_id: int | None = None):
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        if domain_id is None:
            rclpy.init(args=args or [], context=self.context)
        else:
            rclpy.init(args=args or [], context=self.context, domain_id=domain_id)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="ros_session", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                break
            except Exception as error:  # keep spinning; report once
                print(f"ros session: {type(error).__name__}: {error}", file=sys.stderr)

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def start_node(self, parameters: dict | None = None, name: str = NODE_NAME) -> AgeGenderNode:
        """An AgeGenderNode in this session with these parameter values (a plain dict: no rclpy for callers)."""
        overrides = [Parameter(key, value=value) for key, value in (parameters or {}).items()]
        return self.add(AgeGenderNode(name, context=self.context, parameter_overrides=overrides))

    def probe(self, **kwargs) -> "Probe":
        """A Probe in this session (keyword arguments as for Probe)."""
        return self.add(Probe(context=self.context, **kwargs))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        for node in reversed(self.nodes):
            try:
                self.executor.remove_node(node)
                node.destroy_node()
            except Exception:
                pass
        self.nodes = []
        try:
            self.executor.shutdown(timeout_sec=1.0)
        except Exception:
            pass
        _try_shutdown(self.context)

    def __enter__(self) -> "RosSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Probe(Node):
    """Publishes images to the node and collects what it publishes (detections, debug images, diagnostics)."""

    def __init__(self, image_topic: str = "/camera/image_raw", compressed_topic: str = "",
                 detections_topic: str = "/agegender/detections", debug_image_topic: str = "",
                 diagnostics: bool = False, name: str = "agegender_probe", context=None, reliable: bool = True):
        super().__init__(name, context=context)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.VOLATILE)
        self.image_pub = self.create_publisher(Image, image_topic, qos) if image_topic else None
        self.compressed_pub = self.create_publisher(CompressedImage, compressed_topic, qos) if compressed_topic \
            else None
        self._cond = threading.Condition()
        self.detections: dict = {}  # (sec, nanosec) -> (AgeGenderArray, monotonic_ns at arrival)
        self.arrivals: list = []  # (stamp_ns, ros clock ns at arrival, number of faces), in arrival order
        self.debug_images: dict = {}  # (sec, nanosec) -> BGR frame
        self.diagnostics: list = []
        self._last_stamp = 0
        self._detections_topic, self._debug_topic = detections_topic, debug_image_topic
        self._image_topic, self._compressed_topic = image_topic, compressed_topic
        self._detections_sub = self.create_subscription(AgeGenderArray, detections_topic, self._on_detections,
                                                        DETECTIONS_QOS)
        self._debug_sub = self.create_subscription(Image, debug_image_topic, self._on_debug_image,
                                                   DEBUG_IMAGE_QOS) if debug_image_topic else None
        if diagnostics and DiagnosticArray is not None:
            self.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, DIAGNOSTICS_QOS)

    # callbacks (executor thread)
    def _on_detections(self, msg) -> None:
        arrived = self.get_clock().now().nanoseconds
        with self._cond:
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.detections[key] = (msg, time.monotonic_ns())
            self.arrivals.append((stamp_to_ns(msg.header.stamp), arrived, len(msg.faces)))
            self._cond.notify_all()

    def _on_debug_image(self, msg) -> None:
        try:
            frame = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
        except ImageDecodeError:
            return
        with self._cond:
            self.debug_images[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = np.array(frame)
            self._cond.notify_all()

    def _on_diagnostics(self, msg) -> None:
        with self._cond:
            self.diagnostics.append(msg)
            self._cond.notify_all()

    # publishing
    def header(self, frame_id: str = "camera", stamp_ns: int | None = None) -> Header:
        """A header stamped now (strictly increasing across calls) or at `stamp_ns`."""
        if stamp_ns is None:
            stamp_ns = max(self.get_clock().now().nanoseconds, self._last_stamp + 1)
            self._last_stamp = stamp_ns
        header = Header()
        header.frame_id = frame_id
        header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return header

    def publish_frame(self, frame_bgr: np.ndarray, encoding: str = "bgr8", frame_id: str = "camera",
                      stamp_ns: int | None = None) -> tuple:
        """Publish a BGR frame as Image in `encoding`, or as CompressedImage when encoding is jpeg/png.
        Returns the stamp as (sec, nanosec)."""
        header = self.header(frame_id, stamp_ns)
        if encoding in ("jpeg", "png"):
            if self.compressed_pub is None:
                raise ValueError("this probe has no compressed_topic")
            self.compressed_pub.publish(compressed_message(frame_bgr, header, encoding))
        else:
            if self.image_pub is None:
                raise ValueError("this probe has no image_topic")
            self.image_pub.publish(image_message(encode_frame(frame_bgr, encoding), header))
        return header.stamp.sec, header.stamp.nanosec

    def wait_ready(self, timeout: float = 20.0, debug_image: bool = False) -> bool:
        """True once the node subscribes to our images and publishes detections (and debug images) to us."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pubs = [(p, t) for p, t in ((self.image_pub, self._image_topic),
                                        (self.compressed_pub, self._compressed_topic)) if p is not None]
            topics = [self._detections_topic] + ([self._debug_topic] if debug_image and self._debug_topic else [])
            # Node.count_publishers: Subscription.get_publisher_count is not in Humble.
            if all(_subscriber_count(self, p, t) > 0 for p, t in pubs) and all(
                    self.count_publishers(t) > 0 for t in topics):
                return True
            time.sleep(0.05)
        return False

    def wait_detections(self, stamp: tuple, timeout: float = 10.0):
        """The AgeGenderArray with this header stamp, or None after `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: stamp in self.detections, timeout):
                return None
            return self.detections[stamp][0]

    def wait_debug_image(self, stamp: tuple, timeout: float = 10.0):
        with self._cond:
            if not self._cond.wait_for(lambda: stamp in self.debug_images, timeout):
                return None
            return self.debug_images[stamp]

    def request(self, frame_bgr: np.ndarray, encoding: str = "bgr8", frame_id: str = "camera",
                timeout: float = 10.0, attempts: int = 3):
        """Publish the frame and wait for its detections; republish (new stamp) if nothing came back.
        Returns (stamp, AgeGenderArray); raises TimeoutError."""
        for _ in range(attempts):
            stamp = self.publish_frame(frame_bgr, encoding, frame_id)
            result = self.wait_detections(stamp, timeout / attempts)
            if result is not None:
                return stamp, result
        raise TimeoutError(f"no AgeGenderArray for a {encoding} frame within {timeout:.0f} s")

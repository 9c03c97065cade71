"""Launch test (launch_testing, add_launch_test in CMakeLists.txt): the managed node through its real lifecycle
services, its live parameters through the real parameter services, and an image that decompresses to gigabytes.

    launch_test test/launch/launch_lifecycle.py          (in a sourced workspace, inside scripts/netns_run.sh)

`nano.launch.py autostart:=false` starts agegender_node unconfigured. From this process (rclpy clients of
/agegender_node/change_state, get_state, set_parameters, a camera publisher and a detections subscriber):
* unconfigured and inactive: it does not subscribe to the camera, and no detections come;
* configure -> activate: detections flow; deactivate: they stop (and the camera subscription goes away);
  activate again: they flow again; deactivate -> cleanup: unconfigured, and resident memory is given back (what
  stays -- shared libraries loaded once -- does not grow with another configure -> cleanup);
* live parameters: score_threshold 0.6 is accepted (and read back); 1.5 (out of range) and a string for
  max_faces (wrong type) are refused with the reason, the old value stays; detector (used by configure) is
  refused while active, with the reason;
* a 16000 x 16000 PNG of a few hundred KB as CompressedImage: skipped from its header, the node's resident
  memory does not jump, and the next normal frame is answered;
* shutdown from unconfigured: the process exits cleanly (exit code 0, assertExitCodes).
Every wait is bounded; a hang fails the test.

File name: not test_*.py, so that the pytest suite in test/ does not collect it.
"""
import os
import threading
import time
import unittest
from pathlib import Path

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import launch_testing.markers
import pytest
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

NODE = "/agegender_node"
IMAGE_TOPIC = "/lifecycle_test/image_raw"
COMPRESSED_TOPIC = "/lifecycle_test/image_raw/compressed"
STARTUP_TIMEOUT_S = float(os.environ.get("AGEGENDER_LAUNCH_TEST_STARTUP_S", "150"))


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description():
    share = get_package_share_directory("agegender_ros")
    nano = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "nano.launch.py")),
        launch_arguments={"image_topics": f"{IMAGE_TOPIC},{COMPRESSED_TOPIC}", "backend": "onnxruntime",
                          "autostart": "false", "max_rate_hz": "0.0"}.items())
    return LaunchDescription([nano, launch_testing.actions.ReadyToTest()])


def _huge_png() -> bytes:
    """A 16000 x 16000 grey PNG (~0.8 MB compressed, 768 MB decoded), made without 768 MB of memory: IHDR +
    one IDAT of a zlib stream of identical rows + IEND."""
    import struct
    import zlib

    width = height = 16000

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x80" * width  # filter byte + grey pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class TestLifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        """A node of our own in a RosSession (private rclpy context, executor spinning in a thread)."""
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import GetParameters, SetParameters
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        from agegender_ros.msg import AgeGenderArray
        from agegender_ros.ros_session import RosSession, camera_frame

        cls.session = RosSession()  # ROS_DOMAIN_ID from the environment, as the launch has it
        cls.node = cls.session.add(Node("agegender_lifecycle_test", context=cls.session.context))
        cls.lock = threading.Lock()
        cls.detections = []
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        cls.image_pub = cls.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        cls.compressed_pub = cls.node.create_publisher(CompressedImage, COMPRESSED_TOPIC, reliable)
        cls.node.create_subscription(AgeGenderArray, "/agegender/detections", cls._on_detections, reliable)
        cls.change_state = cls.node.create_client(ChangeState, f"{NODE}/change_state")
        cls.get_state = cls.node.create_client(GetState, f"{NODE}/get_state")
        cls.set_parameters = cls.node.create_client(SetParameters, f"{NODE}/set_parameters")
        cls.get_parameters = cls.node.create_client(GetParameters, f"{NODE}/get_parameters")
        cls.frame = camera_frame()

    @classmethod
    def _on_detections(cls, msg):
        with cls.lock:
            cls.detections.append(msg)

    @classmethod
    def tearDownClass(cls):
        cls.session.close()

    # helpers
    def _call(self, client, request, timeout=60.0):
        self.assertTrue(client.wait_for_service(timeout_sec=STARTUP_TIMEOUT_S), f"{client.srv_name} never came up")
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        self.assertTrue(done.wait(timeout), f"{client.srv_name}: no answer within {timeout:.0f} s")
        return future.result()

    def _state(self):
        from lifecycle_msgs.srv import GetState

        return self._call(self.get_state, GetState.Request()).current_state.label

    def _transition(self, label, expect_state):
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = label
        self.assertTrue(self._call(self.change_state, request, timeout=120.0).success, f"{label} failed")
        self.assertEqual(self._state(), expect_state)

    def _set(self, name, value):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg()]
        (result,) = self._call(self.set_parameters, request).results
        return result

    def _get(self, name):
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        request = GetParameters.Request()
        request.names = [name]
        (value,) = self._call(self.get_parameters, request).values
        return parameter_value_to_python(value)

    def _publish(self):
        from sensor_msgs.msg import Image

        msg = Image(height=480, width=640, encoding="bgr8", is_bigendian=0, step=640 * 3,
                    data=self.frame.tobytes())
        msg.header.frame_id = "lifecycle_test"
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.image_pub.publish(msg)
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def _answered(self, seconds, wanted=1):
        """Publish a frame every 0.25 s for up to `seconds`; the number of them answered (stops at `wanted`)."""
        sent, answered = set(), set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(answered) < wanted:
            sent.add(self._publish())
            time.sleep(0.25)
            with self.lock:
                answered = {(d.header.stamp.sec, d.header.stamp.nanosec) for d in self.detections} & sent
        return len(answered)

    def _node_pid(self, proc_info):
        (node,) = [p for p in proc_info.processes() if "agegender_node" in p.process_details["name"]]
        return proc_info[node].pid

    def test_lifecycle_parameters_and_a_huge_image(self, proc_info):
        from sensor_msgs.msg import CompressedImage

        pid = self._node_pid(proc_info)
        self.assertEqual(self._state(), "unconfigured")
        rss_unconfigured = _rss_kib(pid)
        self.assertEqual(self._answered(2.0), 0, "detections while unconfigured")
        self.assertEqual(self.node.count_subscribers(IMAGE_TOPIC), 0)

        self._transition("configure", "inactive")
        rss_configured = _rss_kib(pid)
        self.assertEqual(self._answered(2.0), 0, "detections while inactive")

        self._transition("activate", "active")
        self.assertEqual(self._answered(STARTUP_TIMEOUT_S, wanted=2), 2, "no detections while active")

        # Live parameters: accepted (and read back), refused with the reason (old value kept), not live.
        result = self._set("score_threshold", 0.6)
        self.assertTrue(result.successful, result.reason)
        self.assertEqual(self._get("score_threshold"), 0.6)
        result = self._set("score_threshold", 1.5)
        self.assertFalse(result.successful)
        self.assertIn("score_threshold", result.reason)
        self.assertEqual(self._get("score_threshold"), 0.6)
        result = self._set("max_faces", "many")
        self.assertFalse(result.successful)
        self.assertEqual(self._get("max_faces"), 8)  # config/nano.yaml
        result = self._set("detector", "haar")
        self.assertFalse(result.successful)
        self.assertIn("detector cannot change while the node is active", result.reason)
        self.assertEqual(self._get("detector"), "scrfd")
        self.assertEqual(self._answered(30.0), 1, "no detections after the parameter changes")

        # An image that decompresses to 768 MB: refused from its header, memory does not jump, frames go on.
        rss_before = _rss_kib(pid)
        huge = CompressedImage(format="png", data=_huge_png())
        huge.header.stamp = self.node.get_clock().now().to_msg()
        self.compressed_pub.publish(huge)
        time.sleep(3.0)
        self.assertEqual(self._answered(30.0), 1, "no answer to a normal frame after the huge image")
        self.assertLess(_rss_kib(pid) - rss_before, 100 * 1024, "resident memory jumped by 100 MB or more")

        self._transition("deactivate", "inactive")
        time.sleep(0.5)
        self.assertEqual(self._answered(2.0), 0, "detections while deactivated")
        self.assertEqual(self.node.count_subscribers(IMAGE_TOPIC), 0, "still subscribed while inactive")
        self._transition("activate", "active")
        self.assertEqual(self._answered(30.0), 1, "no detections after activating again")
        self._transition("deactivate", "inactive")
        rss_active = _rss_kib(pid)
        self._transition("cleanup", "unconfigured")
        time.sleep(0.5)
        rss_cleaned = _rss_kib(pid)
        model_kib = rss_configured - rss_unconfigured
        print(f"resident memory (KiB): unconfigured {rss_unconfigured}, configured {rss_configured}, "
              f"after running {rss_active}, after cleanup {rss_cleaned}")
        self.assertLess(rss_cleaned, rss_active, "cleanup gave no memory back")
        self.assertGreater(rss_active - rss_cleaned, model_kib // 4,
                           f"cleanup gave back {rss_active - rss_cleaned} KiB of the {model_kib} KiB configure took")
        # What stays after cleanup (shared libraries loaded once, such as ONNX Runtime's) does not grow with
        # further configure / cleanup cycles.
        self._transition("configure", "inactive")
        self._transition("cleanup", "unconfigured")
        time.sleep(0.5)
        rss_cleaned_again = _rss_kib(pid)
        print(f"resident memory (KiB) after a second configure + cleanup: {rss_cleaned_again}")
        self.assertLess(rss_cleaned_again, rss_cleaned + 10 * 1024, "memory grows with each configure/cleanup")

        # Shutdown from unconfigured: the node finalizes and its process ends by itself (exit code: TestShutdown).
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = "shutdown"
        self.assertTrue(self._call(self.change_state, request).success, "shutdown failed")
        (node,) = [p for p in proc_info.processes() if "agegender_node" in p.process_details["name"]]
        proc_info.assertWaitForShutdown(process=node, timeout=30)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

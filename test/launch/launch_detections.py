"""Launch test (ROS 2's launch_testing, registered with add_launch_test in CMakeLists.txt, run by `colcon test`):
the installed launch/nano.launch.py, with launch arguments, processes frames published from outside the launch.

    launch_test test/launch/launch_detections.py          (in a sourced workspace, inside scripts/netns_run.sh)

* starts `nano.launch.py image_topics:=/launch_test/image_raw backend:=onnxruntime publish_debug_image:=false`;
* publishes a 640x480 bgr8 photo with one face a few times (from this process, i.e. a participant without the
  launch's DDS profile, as a user's camera or `ros2 topic echo` would be);
* asserts an agegender_ros/AgeGenderArray on /agegender/detections with that frame's header and one face on it,
  and a vision_msgs/Detection2DArray on /agegender/detections_2d with the same header;
* checks that the launch gave the node (and only the node) the Fast DDS shared-memory profile when the RMW is
  Fast DDS and no profile of the user's own is set;
* after shutdown: every process exited cleanly (launch_testing.asserts.assertExitCodes).

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

IMAGE_TOPIC = "/launch_test/image_raw"
FRAME_ID = "launch_test_camera"
# Start-up (ONNX Runtime sessions, SCRFD) on a busy 2-core CI machine can take a while.
STARTUP_TIMEOUT_S = float(os.environ.get("AGEGENDER_LAUNCH_TEST_STARTUP_S", "150"))


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description():
    share = get_package_share_directory("agegender_ros")
    nano = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "nano.launch.py")),
        launch_arguments={"image_topics": IMAGE_TOPIC, "backend": "onnxruntime", "publish_debug_image": "false",
                          "log_level": "info"}.items())
    return LaunchDescription([nano, launch_testing.actions.ReadyToTest()])


def _frame():
    from agegender_ros.ros_session import camera_frame

    return camera_frame()  # the astronaut's face, as scripts/bench_node.py uses it


class TestDetections(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        """A node of our own in a RosSession (private rclpy context, executor spinning in a thread)."""
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from agegender_ros.msg import AgeGenderArray
        from agegender_ros.ros_session import RosSession

        cls.session = RosSession()  # ROS_DOMAIN_ID from the environment, as the launch has it
        cls.node = cls.session.add(Node("agegender_launch_test", context=cls.session.context))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        cls.lock = threading.Lock()
        cls.detections, cls.detections_2d = [], []
        cls.image_pub = cls.node.create_publisher(Image, IMAGE_TOPIC, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE))
        cls.node.create_subscription(AgeGenderArray, "/agegender/detections", cls._keep(cls.detections), qos)
        try:
            from vision_msgs.msg import Detection2DArray
        except ImportError:
            cls.vision_msgs = False
        else:
            cls.vision_msgs = True
            cls.node.create_subscription(Detection2DArray, "/agegender/detections_2d", cls._keep(cls.detections_2d),
                                         qos)
        cls.answers = cls._publish_until_answered()

    @classmethod
    def _keep(cls, store):
        def callback(msg):
            with cls.lock:
                store.append(msg)
        return callback

    @classmethod
    def _publish_until_answered(cls):
        """Publish the frame (fresh stamp each time) every 0.5 s until the node answered 3 of them, or time out.
        Returns [(header, AgeGenderArray), ...] for the answered frames."""
        from sensor_msgs.msg import Image

        frame = _frame()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while cls.image_pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = {}
        answers = []
        while len(answers) < 3 and time.monotonic() < deadline:
            msg = Image(height=480, width=640, encoding="bgr8", is_bigendian=0, step=640 * 3, data=frame.tobytes())
            msg.header.frame_id = FRAME_ID
            msg.header.stamp = cls.node.get_clock().now().to_msg()
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg.header
            cls.image_pub.publish(msg)
            time.sleep(0.5)
            with cls.lock:
                answers = [(sent[key], d) for d in cls.detections
                           if (key := (d.header.stamp.sec, d.header.stamp.nanosec)) in sent]
        return answers

    @classmethod
    def tearDownClass(cls):
        cls.session.close()

    def test_detections_carry_the_frames_header_and_the_face(self):
        self.assertGreaterEqual(len(self.answers), 1, f"no AgeGenderArray for the published frames within "
                                f"{STARTUP_TIMEOUT_S:.0f} s (received {len(self.detections)} other(s))")
        for header, msg in self.answers:
            self.assertEqual(msg.header.frame_id, FRAME_ID)
            self.assertEqual((msg.header.stamp.sec, msg.header.stamp.nanosec),
                             (header.stamp.sec, header.stamp.nanosec))
            self.assertEqual(len(msg.faces), 1)
            face = msg.faces[0]
            # The astronaut's face: around x 245..340, y 60..180 in this 640x480 frame.
            cx = face.roi.x_offset + face.roi.width / 2
            cy = face.roi.y_offset + face.roi.height / 2
            self.assertTrue(200 < cx < 380 and 40 < cy < 220, f"face box {face.roi} is not on the face")
            self.assertTrue(0.0 <= face.p_male <= 1.0 and 0.0 < face.age < 120.0)
            self.assertIn(face.gender, (face.GENDER_FEMALE, face.GENDER_MALE))

    def test_vision_msgs_detection2d_array_with_the_same_header(self):
        if not self.vision_msgs:
            self.skipTest("vision_msgs is not installed: the node publishes no Detection2DArray")
        self.assertTrue(self.answers, "no detections at all (see the other test)")
        wanted = {(h.stamp.sec, h.stamp.nanosec) for h, _ in self.answers}
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with self.lock:
                matching = [d for d in self.detections_2d if (d.header.stamp.sec, d.header.stamp.nanosec) in wanted]
            if len(matching) == len(wanted):
                break
            time.sleep(0.1)
        self.assertEqual(len(matching), len(wanted), "a Detection2DArray is missing for an answered frame")
        for msg in matching:
            self.assertEqual(type(msg).__name__, "Detection2DArray")
            self.assertEqual(msg.header.frame_id, FRAME_ID)
            self.assertEqual(len(msg.detections), 1)
            self.assertEqual(msg.detections[0].results[0].hypothesis.class_id, "face")

    def test_launch_sets_the_shared_memory_profile_for_its_processes_only(self, proc_info):
        from agegender_ros.launch_args import DDS_PROFILE_FILE, DDS_PROFILE_VARIABLES, uses_fast_dds

        if not uses_fast_dds(os.environ):
            self.skipTest(f"RMW_IMPLEMENTATION={os.environ.get('RMW_IMPLEMENTATION')}: no Fast DDS profile to set")
        if any(os.environ.get(name) for name in DDS_PROFILE_VARIABLES):
            self.skipTest("a Fast DDS profile of the user's own is set: the launch leaves it alone")
        (node,) = [p for p in proc_info.processes() if "agegender_node" in p.process_details["name"]]
        pid = proc_info[node].pid
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
        expected = os.path.join(get_package_share_directory("agegender_ros"), "config", DDS_PROFILE_FILE)
        for name in DDS_PROFILE_VARIABLES:
            self.assertEqual(environ.get(name), expected, name)
            self.assertNotIn(name, os.environ)  # scoped: the launch's own process (this one) does not get it


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

"""Launch test (launch_testing, registered with add_launch_test in CMakeLists.txt, run by `colcon test`): the by-hand
path of docs/ros.md -- the installed nano.launch.py, and `ros2 run agegender_ros image_publisher` as the camera.

    launch_test test/launch/launch_image_publisher.py     (in a sourced workspace, inside scripts/netns_run.sh)

* starts `nano.launch.py image_topics:=/launch_test/image_raw` and, beside it (not in its group, so with the
  DDS profile it sets itself), the installed `image_publisher` executable on the package's sample photos:
  `image_publisher SAMPLES --rate 2 --loop --topic /launch_test/image_raw --frame-id launch_test_camera`;
* the images a subscriber of our own receives: bgr8, the photos' sizes, frame_id, fresh and distinct stamps;
* the node answers each photo with an AgeGenderArray carrying the image's header (the astronaut: one face, the
  Solvay group: several);
* the publisher says it took the package's shared-memory profile (Fast DDS, no profile of the user's own);
* after shutdown: every process exited cleanly (a Ctrl-C'd publisher exits 0).

File name: not test_*.py, so that the pytest suite in test/ does not collect it.
"""
import os
import threading
import time
import unittest

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import launch_testing.markers
import pytest
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.actions import Node

IMAGE_TOPIC = "/launch_test/image_raw"
FRAME_ID = "launch_test_camera"
STARTUP_TIMEOUT_S = float(os.environ.get("AGEGENDER_LAUNCH_TEST_STARTUP_S", "150"))


def _samples():
    import agegender_ros

    for folder in agegender_ros.__path__:  # the installed package and, in a source tree, the checkout
        if os.path.isdir(os.path.join(folder, "samples")):
            return os.path.join(folder, "samples")
    raise unittest.SkipTest("agegender_ros/samples not found")


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description():
    share = get_package_share_directory("agegender_ros")
    nano = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "nano.launch.py")),
        launch_arguments={"image_topics": IMAGE_TOPIC, "backend": "onnxruntime", "publish_debug_image": "false",
                          "max_faces": "32"}.items())
    camera = Node(package="agegender_ros", executable="image_publisher", output="screen",
                  arguments=[_samples(), "--rate", "2", "--loop", "--topic", IMAGE_TOPIC, "--frame-id", FRAME_ID])
    return LaunchDescription([nano, camera, launch_testing.actions.ReadyToTest()]), {"camera": camera}


class TestImagePublisher(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        """A node of our own in a RosSession (private rclpy context, executor spinning in a thread)."""
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from agegender_ros.msg import AgeGenderArray
        from agegender_ros.ros_session import RosSession

        cls.session = RosSession()  # ROS_DOMAIN_ID from the environment, as the launch has it
        cls.node = cls.session.add(Node("agegender_image_publisher_test", context=cls.session.context))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        cls.lock = threading.Lock()
        cls.images, cls.detections = [], []
        cls.node.create_subscription(Image, IMAGE_TOPIC, cls._keep(cls.images, header_only=True), qos)
        cls.node.create_subscription(AgeGenderArray, "/agegender/detections", cls._keep(cls.detections), qos)
        cls.answers = cls._wait_for_answers()

    @classmethod
    def _keep(cls, store, header_only=False):
        def callback(msg):
            item = (msg.header.frame_id, (msg.header.stamp.sec, msg.header.stamp.nanosec), msg.encoding,
                    msg.width, msg.height, msg.step, len(msg.data)) if header_only else msg
            with cls.lock:
                store.append(item)
        return callback

    @classmethod
    def _wait_for_answers(cls):
        """The node's AgeGenderArrays for the publisher's images, once both photos were answered and our own
        subscription has seen two images too (it may match the publisher after the node did; or time out)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            with cls.lock:
                answers = [d for d in cls.detections if d.header.frame_id == FRAME_ID]
                images = len(cls.images)
            # the astronaut (1 face) and the group (several)
            if {min(len(d.faces), 2) for d in answers} >= {1, 2} and images >= 2:
                return answers
            time.sleep(0.2)
        return answers

    @classmethod
    def tearDownClass(cls):
        cls.session.close()

    def test_images_are_bgr8_with_fresh_headers(self):
        with self.lock:
            images = list(self.images)
        self.assertGreaterEqual(len(images), 2, "the image publisher sent nothing we received")
        sizes = {(512, 512), (1600, 1158)}  # astronaut.jpg, solvay_1927.jpg
        for frame_id, _, encoding, width, height, step, size in images:
            self.assertEqual((frame_id, encoding), (FRAME_ID, "bgr8"))
            self.assertIn((width, height), sizes)
            self.assertEqual((step, size), (width * 3, width * 3 * height))
        stamps = [stamp for _, stamp, *_ in images]
        self.assertEqual(len(set(stamps)), len(stamps), "two images with the same stamp")
        now = self.node.get_clock().now().nanoseconds
        self.assertLess(abs(now - (stamps[-1][0] * 10**9 + stamps[-1][1])), 120 * 10**9, "stamps are not the clock's")

    def test_the_node_answers_each_photo_with_its_header(self):
        self.assertTrue(self.answers, f"no AgeGenderArray for {FRAME_ID} within {STARTUP_TIMEOUT_S:.0f} s")
        counts = {len(d.faces) for d in self.answers}
        self.assertIn(1, counts, f"the astronaut (one face) was not answered: {counts}")
        self.assertTrue(any(c >= 2 for c in counts), f"the Solvay group (several faces) was not answered: {counts}")
        with self.lock:
            sent = {stamp for _, stamp, *_ in self.images}
        answered = {(d.header.stamp.sec, d.header.stamp.nanosec) for d in self.answers}
        self.assertTrue(answered & sent, "no answer carries the stamp of an image the publisher sent")

    def test_the_publisher_takes_the_shared_memory_profile(self, proc_output, camera):
        from agegender_ros.launch_args import DDS_PROFILE_FILE, DDS_PROFILE_VARIABLES, uses_fast_dds

        if not uses_fast_dds(os.environ):
            self.skipTest(f"RMW_IMPLEMENTATION={os.environ.get('RMW_IMPLEMENTATION')}: no Fast DDS profile")
        if any(os.environ.get(name) for name in DDS_PROFILE_VARIABLES):
            self.skipTest("a Fast DDS profile of the user's own is set: the publisher leaves it alone")
        expected = os.path.join(get_package_share_directory("agegender_ros"), "config", DDS_PROFILE_FILE)
        proc_output.assertWaitFor(f"Fast DDS profile {expected}", process=camera, timeout=30, stream="stdout")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

"""`ros2 run agegender_ros image_publisher` (agegender_ros/image_publisher.py, issue 31 part 8): the ROS-free frame
reading (photo folders, photos, videos, devices, --loop), the arguments, the DDS profile it takes, and, over real
DDS (inside scripts/netns_run.sh only), the Image messages a subscriber receives. The launch test
test/launch/launch_image_publisher.py runs it beside nano.launch.py's node."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender_ros import image_publisher as publisher
from conftest import SAMPLES, ros_import

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.glob("*.jpg"))


def test_a_photo_folder_gives_its_photos_in_name_order_as_bgr_frames():
    frames = list(publisher.frames(str(SAMPLES)))
    assert [f.name for f in frames] == SAMPLE_NAMES
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
        np.testing.assert_array_equal(frame.image, cv2.imread(str(SAMPLES / frame.name)))


def test_loop_starts_again_and_unreadable_photos_are_named_and_skipped(tmp_path):
    shutil.copy(SAMPLES / "astronaut.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    warnings = []
    stream = publisher.frames(str(tmp_path), loop=True, warn=warnings.append)
    names = [next(stream).name for _ in range(3)]
    assert names == ["a.jpg", "a.jpg", "a.jpg"]
    assert warnings and all("b.jpg" in w and w.startswith("image_publisher: skipped: ") for w in warnings)


def test_a_folder_without_a_readable_photo_is_one_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 cut short")
    with pytest.raises(publisher.SourceError, match="no readable photo or video frame"):
        list(publisher.frames(str(tmp_path), warn=lambda _: None))
    with pytest.raises(publisher.SourceError, match="no such file, folder or device"):
        publisher.parse_source(str(tmp_path / "missing"))


def test_a_video_file_gives_its_frames(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    assert writer.isOpened()
    for i in range(4):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.release()
    assert publisher.parse_source(str(path)) == ("video", path)
    frames = list(publisher.frames(str(path)))
    assert [f.name for f in frames] == [f"clip.avi#frame={i}" for i in range(4)]
    assert frames[0].image.shape == (120, 160, 3)
    assert len(list(zip(range(10), publisher.frames(str(path), loop=True)))) == 10  # --loop plays it again
    assert publisher._video_rate("video", path) == pytest.approx(5.0)


def test_devices_and_arguments():
    assert publisher.parse_source("0") == ("device", 0)
    assert publisher.parse_source("/dev/video2") == ("device", "/dev/video2")
    assert publisher.own_arguments(["image_publisher", "photos", "--rate", "2", "--ros-args", "-r", "__node:=cam",
                                    "--", "--loop"]) == ["photos", "--rate", "2", "--loop"]
    args = publisher.build_parser().parse_args([])
    assert args.source == str(publisher.SAMPLES) and args.topic == "/camera/image_raw" and args.rate is None


def test_help_works_without_ros():
    result = subprocess.run([sys.executable, "-m", "agegender_ros.image_publisher", "--help"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert "PHOTO_DIR_OR_VIDEO_OR_DEVICE" in result.stdout and "--rate HZ" in result.stdout
    assert "rclpy" not in result.stderr


def test_it_takes_the_launch_files_shared_memory_profile():
    from agegender_ros.launch_args import DDS_PROFILE_FILE, DDS_PROFILE_VARIABLES

    if not (Path(publisher.share_directory()) / "config" / DDS_PROFILE_FILE).is_file():
        pytest.skip("no config/ folder here (pip install .: colcon and the source checkout have it)")
    environment = publisher.dds_environment("auto", {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"})
    assert set(environment) == set(DDS_PROFILE_VARIABLES)
    for path in environment.values():
        assert Path(path).name == DDS_PROFILE_FILE and Path(path).is_file()
    # A profile of the user's own, another RMW, or none asked for: nothing set.
    assert publisher.dds_environment("auto", {DDS_PROFILE_VARIABLES[0]: "/mine.xml"}) == {}
    assert publisher.dds_environment("auto", {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}) == {}
    assert publisher.dds_environment("none", {}) == {}


def test_a_subscriber_receives_bgr8_images_with_headers():
    """Over real DDS: `python -m agegender_ros.image_publisher SAMPLES --rate 5 --count 4 --loop --topic T` and an
    rclpy subscriber (reliable, as `ros2 topic echo` and image viewers subscribe)."""
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build`")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from agegender_ros.ros_image import decode_raw

    topic = "/image_publisher_test/image_raw"
    context = rclpy.Context()
    rclpy.init(context=context)
    received = []  # filled by spin_once, in this thread
    node = rclpy.create_node("image_publisher_test", context=context)
    node.create_subscription(Image, topic, received.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    process = subprocess.Popen([sys.executable, "-m", "agegender_ros.image_publisher", str(SAMPLES), "--rate", "5",
                                "--count", "4", "--loop", "--topic", topic, "--frame-id", "test_camera"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 2
        while time.monotonic() < end:  # what is still on its way
            executor.spin_once(timeout_sec=0.05)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert process.returncode == 0, output
    assert f"-> {topic} as bgr8 sensor_msgs/Image" in output and "published 4 frame(s)" in output, output
    if publisher.dds_environment("auto", os.environ):  # Fast DDS and no profile of the user's own
        assert "fastdds_large_shm.xml" in output, output
    assert len(received) == 4, output
    stamps = [msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec for msg in received]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    assert abs(stamps[-1] - time.time_ns()) < 120 * 10**9  # stamped with the clock, not zero
    assert 0.1e9 < stamps[1] - stamps[0] < 1.0e9  # --rate 5: about 0.2 s apart
    expected = [cv2.imread(str(SAMPLES / SAMPLE_NAMES[i % len(SAMPLE_NAMES)])) for i in range(4)]
    for msg, image in zip(received, expected):
        assert msg.header.frame_id == "test_camera" and msg.encoding == "bgr8"
        assert (msg.height, msg.width, msg.step) == (image.shape[0], image.shape[1], image.shape[1] * 3)
        np.testing.assert_array_equal(decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data), image)


RELIABLE_SUBSCRIBER = """
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("image_publisher_frozen_subscriber")
qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
node.create_subscription(Image, {topic!r}, lambda msg: print("received", flush=True), qos)
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


def test_ctrl_c_does_not_wait_for_a_subscriber_that_stopped_acknowledging():
    """Ctrl-C ends the publisher at once, even when a reliable subscriber stopped acknowledging (here: frozen with
    SIGSTOP). Waiting for its acknowledgements took the wait's whole 5 s, past the 5 s `ros2 launch` gives a process
    after SIGINT before it escalates to SIGTERM and then SIGKILL (the launch test's publisher exited with -9)."""
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")
    topic = "/image_publisher_ctrl_c_test/image_raw"
    subscriber = subprocess.Popen([sys.executable, "-c", RELIABLE_SUBSCRIBER.format(topic=topic)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Two rounds: after Ctrl-C the old code waited only when rclpy had not yet shut its context down (a race).
        for _ in range(2):
            process = subprocess.Popen([sys.executable, "-u", "-m", "agegender_ros.image_publisher", str(SAMPLES),
                                        "--rate", "4", "--loop", "--topic", topic, "--wait", "30"],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                lines = []
                for line in process.stdout:  # two frames published: the subscriber is matched and has taken some
                    lines.append(line)
                    if sum(SAMPLE_NAMES[0] in x or SAMPLE_NAMES[-1] in x for x in lines) >= 2:
                        break
                assert process.poll() is None, "".join(lines)
                subscriber.send_signal(signal.SIGSTOP)
                time.sleep(0.3)  # the publisher's next frame goes unacknowledged
                process.send_signal(signal.SIGINT)
                started = time.monotonic()
                output = process.communicate(timeout=30)[0]
                took = time.monotonic() - started
            finally:
                subscriber.send_signal(signal.SIGCONT)
                if process.poll() is None:
                    process.kill()
            assert process.returncode == 0, "".join(lines) + output
            assert "published" in output and took < 3.0, f"Ctrl-C took {took:.1f} s:\n{output}"
    finally:
        subscriber.kill()
        subscriber.communicate()


HANGING_CLEANUP = """
import sys, time
import rclpy.node
rclpy.node.Node.destroy_node = lambda self: time.sleep(60)  # a DDS teardown that hangs
from agegender_ros.image_publisher import main
sys.exit(main(sys.argv))
"""


def test_a_clean_up_that_hangs_after_ctrl_c_says_where_and_ends():
    """After Ctrl-C the clean-up has CLEANUP_TIMEOUT_S: one that hangs prints every thread's stack and ends the
    process (status 1) before `ros2 launch` would escalate to SIGTERM (5 s) and SIGKILL (10 s) without a word."""
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")

    process = subprocess.Popen([sys.executable, "-u", "-c", HANGING_CLEANUP, str(SAMPLES), "--rate", "4", "--loop",
                                "--topic", "/image_publisher_hang_test/image_raw", "--wait", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if SAMPLE_NAMES[0] in line:  # publishing
                break
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        output = process.communicate(timeout=30)[0]
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, "".join(lines) + output
    assert "Timeout" in output and "in <lambda>" in output, output  # faulthandler's dump, down to the hang
    assert publisher.CLEANUP_TIMEOUT_S <= took < publisher.CLEANUP_TIMEOUT_S + 2.0, f"{took:.1f} s:\n{output}"

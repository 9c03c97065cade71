"""The ROS 2 node (agegender_ros.node) end to end over real DDS, plus its ROS-side helpers.

* Helpers (message conversion, YAML echo format, vision_msgs, throttling): need the built package
  (`colcon build`, `source install/setup.bash`), no DDS.
* Live tests: a real rclpy publisher sends real photos (the bundled astronaut.jpg, UTKFace / AAF photos from
  ../shared/data when present) as Image rgb8 / bgr8 and as CompressedImage; a real subscriber checks the
  AgeGenderArray on /agegender/detections (header stamp, boxes around the faces), the debug image, the
  diagnostics, empty detections, the newest-frame policy, a flood of >= 1000 malformed messages, parameter
  validation (in-process and as `python -m agegender_ros.node` with a bad params file) and the installed
  `agegender_node` executable with config/nano.yaml. They run only inside a private network namespace
  (scripts/netns_run.sh sets AGEGENDER_NETNS=1), so DDS traffic never leaves the host.

The node runs with random-init weights (conftest `random_weights`): these tests check the pipeline, not
accuracy, and pass with or without the trained default weights.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ros_import

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "agegender_ros" / "samples"
SHARED_DATA = REPO.parent / "shared" / "data"
# astronaut.jpg (512 x 512): the face lies around x 180-270, y 60-180.
ASTRONAUT_FACE = (180, 60, 270, 180)
FRAME_ID = "camera_optical_frame"

pytestmark = pytest.mark.timeout(90)

# Our own DDS domain: a private network namespace does not separate Fast DDS's shared-memory transport, so a
# ROS process in another namespace on this host (another test run) could otherwise take our messages.
DOMAIN_ID = int(os.environ["ROS_DOMAIN_ID"]) if os.environ.get("ROS_DOMAIN_ID", "").isdigit() else \
    random.SystemRandom().randint(1, 101)


def _ros():
    # Skipped where ROS is not set up; where the underlay was built (AGEGENDER_REQUIRE_ROS=1) an error instead.
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build` and "
                                    "`source install/setup.bash`")
    import agegender_ros.node as node_module

    return node_module


def _need_dds():
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh "
                    "(sets AGEGENDER_NETNS=1)")
    return _ros()


def _centre(face):
    return face.roi.x_offset + face.roi.width / 2, face.roi.y_offset + face.roi.height / 2


def _inside(point, box):
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


@pytest.fixture(scope="module")
def astronaut():
    image = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    assert image is not None and image.shape == (512, 512, 3)
    return image


@pytest.fixture(scope="module")
def live(random_weights):
    """One in-process node (all outputs on) + one probe, in a private rclpy context."""
    node_module = _need_dds()
    from rclpy.parameter import Parameter

    from agegender_ros.ros_session import Probe, RosSession

    session = RosSession(domain_id=DOMAIN_ID)
    try:
        node = session.add(node_module.AgeGenderNode(context=session.context, parameter_overrides=[
            Parameter("weights", value=str(random_weights)),
            Parameter("backend", value="onnxruntime"),
            Parameter("compressed_image_topics", value=["/camera/image_raw/compressed"]),
            Parameter("publish_debug_image", value=True),
            Parameter("diagnostics_period_s", value=0.5),
            Parameter("warn_throttle_s", value=1.0),
            Parameter("num_threads", value=1),
        ]))
        probe = session.add(Probe(context=session.context, compressed_topic="/camera/image_raw/compressed",
                                  debug_image_topic="/agegender/debug_image", diagnostics=True))
        assert probe.wait_ready(20.0, debug_image=True), "node and probe did not discover each other in 20 s"
        yield types.SimpleNamespace(node=node, probe=probe, session=session, module=node_module)
    finally:
        session.close()


# ------------------------------------------------------------------------------------ helpers (no DDS)
def test_faces_to_message_fields_and_clamping():
    m = _ros()
    from std_msgs.msg import Header

    from agegender_ros.msg import AgeGender
    from agegender_ros.tracking import TrackedFace

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    faces = [TrackedFace(7, (-10.4, 5.2, 50.6, 80.1), 0.9, 31.5, 2.0, 0.75, 3),
             TrackedFace(0, (600.0, 400.0, 700.0, 520.0), 0.6, 8.0, 0.0, 0.125, 1)]
    msg = m.faces_to_message(header, faces, 640, 480)
    assert msg.header.stamp.sec == 12 and msg.header.frame_id == "cam"
    a, b = msg.faces
    assert (a.roi.x_offset, a.roi.y_offset, a.roi.width, a.roi.height) == (0, 5, 51, 76)
    assert (b.roi.x_offset, b.roi.y_offset, b.roi.width, b.roi.height) == (600, 400, 40, 80)  # clipped
    assert a.gender == AgeGender.GENDER_MALE and a.gender_confidence == pytest.approx(0.75)
    assert b.gender == AgeGender.GENDER_FEMALE and b.gender_confidence == pytest.approx(0.875)
    assert (a.track_id, b.track_id) == (7, 0) and a.age == pytest.approx(31.5) and a.age_std == 2.0
    assert m.faces_to_message(header, [], 640, 480).faces == []


def test_message_to_yaml_matches_ros2_topic_echo_layout():
    m = _ros()
    from std_msgs.msg import Header

    from agegender_ros.ros_echo import message_to_yaml
    from agegender_ros.tracking import TrackedFace

    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 1700000000, 5
    msg = m.faces_to_message(header, [TrackedFace(3, (10, 20, 74, 68), 0.875, 31.5, 2.25, 0.75, 1)], 640, 480)
    assert message_to_yaml(msg).splitlines() == [
        "header:", "  stamp:", "    sec: 1700000000", "    nanosec: 5", "  frame_id: camera",
        "faces:", "- roi:", "    x_offset: 10", "    y_offset: 20", "    height: 48", "    width: 64",
        "    do_rectify: false", "  score: 0.875", "  age: 31.5", "  age_std: 2.25", "  gender: 2",
        "  gender_confidence: 0.75", "  p_male: 0.75", "  track_id: 3",
    ]
    empty = m.faces_to_message(header, [], 640, 480)
    assert message_to_yaml(empty).splitlines()[-1] == "faces: []"
    # A float32 field as a subscriber receives it (0.1 stored as float32) prints as the real echo prints it: the
    # exact value, not a rounded one.
    received = float(np.float32(0.1))
    inexact = m.faces_to_message(header, [TrackedFace(3, (10, 20, 74, 68), received, 31.5, 2.25, 0.75, 1)], 640, 480)
    assert "  score: 0.10000000149011612" in message_to_yaml(inexact).splitlines()


def _fake_vision_msgs(v4: bool):
    """Stand-ins shaped like vision_msgs 4.x (Humble+) or 3.x messages."""
    ns = types.SimpleNamespace

    def detection2d():
        centre = ns(position=ns(x=0.0, y=0.0), theta=0.0) if v4 else ns(x=0.0, y=0.0, theta=0.0)
        det = ns(header=None, results=[], bbox=ns(center=centre, size_x=0.0, size_y=0.0))
        if v4:
            det.id = ""
        return det

    def hypothesis():
        return ns(hypothesis=ns(class_id="", score=0.0), pose=None) if v4 else ns(id="", score=0.0, pose=None)

    return ns(Detection2DArray=lambda: ns(header=None, detections=[]), Detection2D=detection2d,
              ObjectHypothesisWithPose=hypothesis)


@pytest.mark.parametrize("v4", [True, False], ids=["vision_msgs4", "vision_msgs3"])
def test_detection2d_array(v4):
    m = _ros()
    from agegender_ros.tracking import TrackedFace

    out = m.detection2d_array(_fake_vision_msgs(v4), "HEADER", [TrackedFace(9, (10, 20, 50, 80), 0.8, 30, 1, 0.6, 2)])
    (det,) = out.detections
    centre = det.bbox.center.position if v4 else det.bbox.center
    assert (centre.x, centre.y, det.bbox.size_x, det.bbox.size_y) == (30.0, 50.0, 40.0, 60.0)
    assert out.header == "HEADER" and det.header == "HEADER"
    hyp = det.results[0]
    assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == ("face", 0.8) if v4 else (hyp.id, hyp.score) == \
        ("face", 0.8)
    if v4:
        assert det.id == "9"


def test_throttle():
    m = _ros()
    now = [0.0]
    throttle = m.Throttle(5.0, clock=lambda: now[0])
    assert throttle.check() == 0
    assert [throttle.check() for _ in range(10)] == [None] * 10
    now[0] = 5.0
    assert throttle.check() == 10
    assert (throttle.emitted, throttle.total) == (2, 12)


def test_help_lists_parameters_without_starting_ros():
    result = subprocess.run([sys.executable, "-m", "agegender_ros.node", "--help"], capture_output=True, text=True,
                            timeout=60)
    if "agegender_ros.msg is not importable" in result.stderr or "No module named 'rclpy'" in result.stderr:
        pytest.skip("package not built / ROS not sourced")
    assert result.returncode == 0, result.stderr
    for name in ("image_topics", "score_threshold", "max_rate_hz", "track_max_missed"):
        assert name in result.stdout


# ---------------------------------------------------------------------------------------- live DDS tests
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "jpeg"])
def test_astronaut_end_to_end(live, astronaut, encoding):
    stamp, msg = live.probe.request(astronaut, encoding, frame_id=FRAME_ID, timeout=15)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp
    assert msg.header.frame_id == FRAME_ID
    assert len(msg.faces) == 1, [(_centre(f), f.score) for f in msg.faces]
    face = msg.faces[0]
    assert _inside(_centre(face), ASTRONAUT_FACE), _centre(face)
    assert 50 <= face.roi.width <= 150 and 60 <= face.roi.height <= 180
    assert 0.5 <= face.score <= 1.0
    assert np.isfinite(face.age) and face.age_std >= 0
    assert face.gender in (1, 2) and 0.5 <= face.gender_confidence <= 1.0
    assert 0.0 <= face.p_male <= 1.0 and face.track_id > 0


def _shared_photos():
    photos = []
    for pattern in ("utkface/crop_part1/*.jpg", "aaf/aglined faces/*.jpg"):
        found = sorted(SHARED_DATA.glob(pattern))[:2]
        photos += found
    return photos


def test_shared_data_photos_end_to_end(live):
    photos = _shared_photos()
    if not photos:
        pytest.skip(f"no photos under {SHARED_DATA} (the real datasets live in ../shared/data beside the repo)")
    for path in photos:
        photo = cv2.imread(str(path))
        h, w = photo.shape[:2]
        # The (tightly cropped) photo in the middle of a larger frame, as a camera would see a face.
        frame = cv2.copyMakeBorder(photo, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT, value=(110,) * 3)
        for encoding in ("bgr8", "jpeg"):
            stamp, msg = live.probe.request(frame, encoding, frame_id=FRAME_ID, timeout=15)
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp
            assert msg.faces, f"no face found in {path.name} ({encoding})"
            centre_half = (w // 2 + w / 4, h // 2 + h / 4, w // 2 + 3 * w / 4, h // 2 + 3 * h / 4)
            assert any(_inside(_centre(f), centre_half) for f in msg.faces), (path.name, _centre(msg.faces[0]))


def test_solvay_group_photo_many_faces(live):
    image = cv2.imread(str(SAMPLES / "solvay_1927.jpg"))
    _, msg = live.probe.request(image, "bgr8", timeout=20)
    ids = [f.track_id for f in msg.faces]
    assert len(msg.faces) >= 10 and len(set(ids)) == len(ids) and all(ids)


def test_no_face_gives_an_empty_array_with_the_header(live):
    blank = np.full((480, 640, 3), 127, np.uint8)
    for encoding in ("bgr8", "mono8", "jpeg"):
        stamp, msg = live.probe.request(blank, encoding, frame_id="empty_frame", timeout=15)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp
        assert msg.header.frame_id == "empty_frame"
        assert list(msg.faces) == []


def test_tracking_keeps_ids_and_smooths(live, astronaut):
    results = [live.probe.request(astronaut, "bgr8", timeout=15)[1] for _ in range(4)]
    shifted = np.roll(astronaut, 6, axis=1)  # the face moves a little
    results.append(live.probe.request(shifted, "bgr8", timeout=15)[1])
    ids = {r.faces[0].track_id for r in results}
    assert len(ids) == 1 and ids.pop() > 0


def test_debug_image(live, astronaut):
    stamp, msg = live.probe.request(astronaut, "rgb8", timeout=15)
    debug = live.probe.wait_debug_image(stamp, 10.0)
    assert debug is not None, "no debug image with the frame's stamp"
    assert debug.shape == astronaut.shape
    assert np.abs(debug.astype(int) - astronaut).sum(axis=2).astype(bool).mean() > 0.001  # something drawn
    x, y = msg.faces[0].roi.x_offset, msg.faces[0].roi.y_offset
    assert np.abs(debug[y:y + 40, x - 2:x + 3].astype(int) - astronaut[y:y + 40, x - 2:x + 3]).max() > 60  # box edge


def test_diagnostics(live, astronaut):
    live.probe.request(astronaut, "bgr8", timeout=15)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        for array_msg in list(live.probe.diagnostics):
            for s in array_msg.status:
                values = {kv.key: kv.value for kv in s.values}
                if "agegender_node" in s.name and int(values.get("frames_processed", 0)) > 0:
                    status = (s, values)
        if status:
            break
        time.sleep(0.1)
    assert status, "no DiagnosticArray from the node with processed frames"
    s, values = status
    for key in ("rate_hz", "input_rate_hz", "latency_ms_p50", "latency_ms_p99", "processing_ms_p50",
                "frames_received", "frames_dropped", "malformed_images", "detector", "backend"):
        assert key in values
    assert values["detector"] == "scrfd" and values["backend"] == "onnxruntime"
    from diagnostic_msgs.msg import DiagnosticStatus

    assert s.level in (DiagnosticStatus.OK, DiagnosticStatus.WARN)
    # A period with frames reports a rate and a latency.
    rated = [dict((kv.key, kv.value) for kv in st.values) for a in live.probe.diagnostics for st in a.status]
    assert any(v["latency_ms_p50"] != "n/a" and float(v["rate_hz"]) > 0 for v in rated)


def test_parameters_are_declared_with_descriptions_and_ranges(live):
    node = live.node
    descriptor = node.describe_parameter("score_threshold")
    assert "detection score" in descriptor.description
    assert descriptor.floating_point_range[0].from_value == 0.0
    assert descriptor.floating_point_range[0].to_value == 1.0
    assert node.describe_parameter("max_faces").integer_range[0].to_value == 256
    assert "tensorrt" in node.describe_parameter("backend").additional_constraints
    assert node.get_parameter("compressed_image_topics").value == ["/camera/image_raw/compressed"]
    assert node.get_parameter("tracking").value is True
    assert node.get_parameter("flip_tta").value is False and node.estimator.flip_tta is False


def test_newest_frame_wins_and_stale_frames_are_dropped(live, astronaut):
    """A burst far faster than the node: no queue builds up, the newest frame is processed promptly."""
    frame = cv2.copyMakeBorder(astronaut, 0, 0, 64, 64, cv2.BORDER_CONSTANT, value=(90,) * 3)[16:496]  # 640x480
    dropped_before = live.node.stats["dropped"]
    processed_before = live.node.stats["processed"]
    stamps = []
    for _ in range(40):
        stamps.append(live.probe.publish_frame(frame, "bgr8"))
        time.sleep(0.002)
    sent_done = time.monotonic()
    last = live.probe.wait_detections(stamps[-1], 10.0)
    if last is None:  # the very last frame may be lost (best effort); the next one must not be
        stamps.append(live.probe.publish_frame(frame, "bgr8"))
        last = live.probe.wait_detections(stamps[-1], 10.0)
    assert last is not None, "the newest frame was never processed"
    assert time.monotonic() - sent_done < 5.0
    answered = sum(1 for s in stamps if s in live.probe.detections)
    assert answered < len(stamps), "every frame of a 40-frame burst was processed: frames are queued"
    assert live.node.stats["processed"] - processed_before < len(stamps)
    assert live.node.stats["dropped"] > dropped_before


def _malformed_messages(node_module, astronaut):
    """An endless cycle of (kind, message) for the raw and the compressed input."""
    from sensor_msgs.msg import CompressedImage, Image

    jpeg = cv2.imencode(".jpg", astronaut)[1].tobytes()
    big_jpeg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    i = 2
    while big_jpeg[i + 1] != 0xC0:
        i += 2 + int.from_bytes(big_jpeg[i + 2:i + 4], "big")
    big_jpeg[i + 5:i + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    rng = np.random.default_rng(0)

    def raw(encoding, height, width, step, size):
        msg = Image(encoding=encoding, height=height, width=width, step=step)
        msg.data = bytes(rng.integers(0, 256, size, dtype=np.uint8))
        return msg

    def compressed(fmt, data):
        msg = CompressedImage(format=fmt)
        msg.data = bytes(data)
        return msg

    kinds = [
        ("wrong step", lambda: raw("bgr8", 48, 64, 100, 100 * 48)),
        ("truncated data", lambda: raw("rgb8", 48, 64, 192, 192 * 48 - 500)),
        ("zero size", lambda: raw("bgr8", 0, 0, 0, 0)),
        ("zero width", lambda: raw("mono8", 48, 0, 0, 10)),
        ("huge size", lambda: raw("bgr8", 100000, 100000, 300000, 1000)),
        ("huge width", lambda: raw("mono8", 1, 4000000000, 4000000000, 16)),
        ("unknown encoding", lambda: raw("bayer_grbg8", 48, 64, 64, 64 * 48)),
        ("empty encoding", lambda: raw("", 48, 64, 192, 192 * 48)),
        ("float encoding", lambda: raw("32FC1", 48, 64, 256, 256 * 48)),
        ("odd yuyv", lambda: raw("yuyv", 48, 63, 126, 126 * 48)),
        ("corrupt jpeg", lambda: compressed("jpeg", b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 3000,
                                                                                        dtype=np.uint8)))),
        ("truncated jpeg", lambda: compressed("jpeg", jpeg[:400])),
        ("jpeg claiming 60000x60000", lambda: compressed("jpeg", big_jpeg)),
        ("empty compressed", lambda: compressed("jpeg", b"")),
        ("not an image", lambda: compressed("png", b"hello world, not a picture")),
        ("depth image", lambda: compressed("16UC1; compressedDepth png", cv2.imencode(".png", astronaut)[1])),
    ]
    while True:
        for kind, make in kinds:
            yield kind, make()


def test_survives_a_flood_of_malformed_messages(live, astronaut, capfd):
    node, probe = live.node, live.probe

    def refused():  # malformed, and too large (refused from the declared size)
        return node.stats["decode_errors"] + node.stats["oversized"]

    before = dict(node.stats)
    throttle_before = node._decode_throttle.emitted
    start = time.monotonic()
    sent = 0
    kinds_seen = set()
    for kind, msg in _malformed_messages(live.module, astronaut):
        if refused() - before["decode_errors"] - before["oversized"] >= 1000 or sent >= 1600:
            break
        errors = refused()
        (probe.compressed_pub if hasattr(msg, "format") else probe.image_pub).publish(msg)
        sent += 1
        # Pace the flood so that each message reaches the decoder (the node keeps only the newest frame).
        deadline = time.monotonic() + 0.5
        while refused() == errors and time.monotonic() < deadline:
            time.sleep(0.0005)
        if refused() > errors:
            kinds_seen.add(kind)
    elapsed = time.monotonic() - start
    rejected = refused() - before["decode_errors"] - before["oversized"]
    assert rejected >= 1000, f"only {rejected} of {sent} malformed messages reached the decoder in {elapsed:.0f} s"
    assert len(kinds_seen) == 16, kinds_seen
    assert node.stats["processed"] == before["processed"]  # none of them produced a detection
    assert node.stats["failures"] == before["failures"]
    assert node._worker.is_alive()

    # Throttled: about one warning per warn_throttle_s (1 s here), not one per message.
    emitted = node._decode_throttle.emitted - throttle_before
    assert 1 <= emitted <= elapsed / 1.0 + 2
    time.sleep(1.1)
    # Valid frames after the flood are processed, raw and compressed.
    for encoding in ("bgr8", "jpeg", "rgb8"):
        stamp, msg = probe.request(astronaut, encoding, timeout=15)
        assert len(msg.faces) == 1 and _inside(_centre(msg.faces[0]), ASTRONAUT_FACE)
    err = capfd.readouterr().err  # rcutils writes its log lines to fd 2
    lines = [ln for ln in err.splitlines() if "skipping a malformed image" in ln]
    assert 1 <= len(lines) <= emitted, err[-2000:]
    assert any("more malformed images skipped since the last warning" in ln for ln in lines), lines
    too_large = [ln for ln in err.splitlines() if "skipping an image: image " in ln]
    assert too_large and all("is larger than max_image_pixels 33,177,600: refused without decoding it" in ln
                             for ln in too_large), too_large


# ---------------------------------------------------------------------------- start-up validation (in-process)
def test_bad_parameters_in_process(random_weights):
    node_module = _need_dds()
    from rclpy.parameter import Parameter

    from agegender_ros.ros_session import RosSession

    with RosSession(domain_id=DOMAIN_ID) as session:
        with pytest.raises(node_module.StartupError) as info:
            node_module.AgeGenderNode("agegender_bad", context=session.context, parameter_overrides=[
                Parameter("score_threshold", value=1.5), Parameter("backend", value="cuda"),
                Parameter("max_faces", value="many"), Parameter("image_topics", value=["not a topic"]),
                Parameter("weights", value=str(random_weights))])
        text = str(info.value)
        assert info.value.exit_code == 2
        for expected in ("score_threshold: 1.5 is outside the allowed range 0.0..1.0", "backend: 'cuda' is not one of",
                         "max_faces: expected an integer", "'not a topic' is not a valid ROS topic name"):
            assert expected in text
        # An integer where a float is expected is accepted (15 -> 15.0); a single topic string becomes a list.
        lenient = [Parameter("max_rate_hz", value=15), Parameter("image_topics", value="/cam/image_raw"),
                   Parameter("weights", value=str(random_weights)), Parameter("backend", value="onnxruntime"),
                   Parameter("diagnostics_period_s", value=0.0)]
        node = session.add(node_module.AgeGenderNode("agegender_lenient", context=session.context,
                                                     parameter_overrides=lenient))
        assert node.params["max_rate_hz"] == 15.0 and node.params["image_topics"] == ["/cam/image_raw"]


def test_desktop_yaml_turns_flip_averaging_on_and_nano_yaml_leaves_it_off(random_weights):
    """The two parameter files as the node reads them: the desktop one mirrors each face (it has the time), the
    Nano one keeps the frame rate."""
    node_module = _need_dds()
    import yaml
    from rclpy.parameter import Parameter

    from agegender_ros.ros_session import RosSession

    with RosSession(domain_id=DOMAIN_ID) as session:
        for name, expected in (("desktop", True), ("nano", False)):
            values = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())["/**"]["ros__parameters"]
            values.update(weights=str(random_weights), backend="onnxruntime", detector="haar")
            node = session.add(node_module.AgeGenderNode(f"agegender_{name}", context=session.context,
                                                         parameter_overrides=[Parameter(k, value=v)
                                                                              for k, v in values.items()]))
            assert node.estimator.flip_tta is expected, name


# ------------------------------------------------------------------------------------------ as a process
def _node_command():
    """The installed `ros2 run` executable when built, else `python -m agegender_ros.node`."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        exe = Path(prefix) / "lib" / "agegender_ros" / "agegender_node"
        if prefix and exe.is_file() and os.access(exe, os.X_OK):
            return [sys.executable, str(exe)]
    return [sys.executable, "-m", "agegender_ros.node"]


def _env():
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), PYTHONUNBUFFERED="1")


def _run(args, timeout=60):
    return subprocess.run(["timeout", "-s", "KILL", str(timeout)] + args, capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=timeout + 10)


def test_bad_params_file_exits_with_a_clear_error(tmp_path, random_weights):
    _need_dds()
    params = tmp_path / "bad.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    score_threshold: 1.5\n    max_faces: 0\n    detector: yolo\n"
        f"    detector_input_size: 300\n    weights: {random_weights}\n")
    result = _run([sys.executable, "-m", "agegender_ros.node", "--ros-args", "--params-file", str(params)])
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    for expected in ("invalid parameter(s)", "score_threshold: 1.5 is outside the allowed range",
                     "max_faces: 0 is outside", "detector: 'yolo' is not one of"):
        assert expected in result.stderr, result.stderr[-2000:]
    # Missing / corrupt weights: a clear error, non-zero exit.
    result = _run(_node_command() + ["--ros-args", "-p", "weights:=/nonexistent/model.pt"])
    assert result.returncode == 2 and "weights: file '/nonexistent/model.pt' does not exist" in result.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a state dict")
    (tmp_path / "broken.json").write_text('{"architecture": "paper"}')
    result = _run(_node_command() + ["--ros-args", "-p", f"weights:={broken}"])
    assert result.returncode == 1 and "weights:" in result.stderr and "broken.pt" in result.stderr, result.stderr


def test_installed_executable_with_nano_yaml(live, random_weights, astronaut):
    """`ros2 run agegender_ros agegender_node --ros-args --params-file config/nano.yaml` as a process: it
    answers a frame, then exits cleanly on SIGINT.

    The probe lives in the `live` session (one DDS participant per process, as in a real system) and sends
    CompressedImage: large raw images from this long-running test process to a new process were seen to go
    missing (a Fast DDS quirk here, not reproduced between fresh processes); the raw path is covered above
    and by scripts/bench_node.py between two processes."""
    from agegender_ros.ros_session import Probe

    # Own process group: the cleanup below kills `timeout` and the node together.
    proc = subprocess.Popen(["timeout", "-s", "KILL", "60"] + _node_command() + [
        "--ros-args", "--params-file", str(REPO / "config" / "nano.yaml"), "-p", f"weights:={random_weights}",
        "-p", "max_rate_hz:=0.0", "-p", "image_topics:=['/nano/image_raw/compressed']",
        "-p", "detections_topic:=/nano/detections", "-r", "__node:=agegender_nano"], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    probe = None
    try:
        # Own topics: the in-process node of the other tests is still up.
        probe = live.session.add(Probe(image_topic="", compressed_topic="/nano/image_raw/compressed",
                                       detections_topic="/nano/detections", context=live.session.context,
                                       name="nano_probe"))
        assert probe.wait_ready(30.0), "".join(output)[-3000:]
        stamp, msg = probe.request(astronaut, "jpeg", timeout=20)
        assert len(msg.faces) == 1 and _inside(_centre(msg.faces[0]), ASTRONAUT_FACE)
        assert msg.faces[0].track_id > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, "".join(output)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if probe is not None:
            live.session.executor.remove_node(probe)
            live.session.nodes.remove(probe)
            probe.destroy_node()
    reader.join(timeout=5)
    text = "".join(output)
    assert "detector scrfd (input 256)" in text, text[-3000:]
    assert "reading /nano/image_raw/compressed (CompressedImage)" in text, text[-3000:]


def test_demo_runs_and_prints_echo_yaml(tmp_path):
    """`make demo`'s command: finishes well under a minute, prints every AgeGenderArray as `ros2 topic echo`
    does and writes the annotated frames."""
    _need_dds()
    out = tmp_path / "demo_out"
    env = dict(_env(), ROS_DOMAIN_ID=str(DOMAIN_ID % 101 + 1))  # not the domain of the live node above
    started = time.monotonic()
    result = subprocess.run(["timeout", "-s", "KILL", "90", sys.executable, "-m", "agegender_ros.demo", "--out",
                             str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=100)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert elapsed < 60
    text = result.stdout
    assert "agegender_ros demo" in text and "/agegender/detections" in text
    assert text.count("header:\n  stamp:\n    sec: ") == 2  # one AgeGenderArray per sample photo
    assert "# astronaut.jpg (512x512): 1 face(s)" in text
    for field in ("- roi:\n    x_offset: ", "  age: ", "  gender: ", "  p_male: ", "  track_id: "):
        assert field in text, field
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_annotated.jpg", "solvay_1927_annotated.jpg"]
    assert cv2.imread(str(out / "astronaut_annotated.jpg")).shape == (512, 512, 3)


# ------------------------------------------------- node paths with a scripted estimator (the `estimator=` hook)
class ScriptedEstimator:
    """Stands in for the estimator through AgeGenderNode's `estimator=` hook: `script(call_number, frame)` returns
    the faces of that frame (estimator.FaceEstimate) or an exception to raise. No model, no detector."""

    def __init__(self, script):
        self.detector = types.SimpleNamespace(name="scripted", detect=lambda frame: [])
        self.backend = types.SimpleNamespace(name="scripted")
        self.max_faces, self.min_face_size, self.flip_tta = 32, 0.0, False
        self.script, self.calls = script, 0

    def __call__(self, frame):
        self.calls += 1
        result = self.script(self.calls, frame)
        if isinstance(result, Exception):
            raise result
        return result


def _face(age, p_male=0.8, box=(100.0, 100.0, 200.0, 220.0), score=0.9):
    from agegender_ros.estimator import FaceEstimate

    return FaceEstimate(box, score, float(age), 1.0, float(p_male))


@contextlib.contextmanager
def _scripted_node(live, name, script, topics=("image",), **parameters):
    """A node named `name` with a ScriptedEstimator in the live session, reading /<name>/<topic> for each topic
    and publishing /<name>/detections; yields (node, estimator, [probe per topic])."""
    from rclpy.parameter import Parameter

    from agegender_ros.ros_session import Probe

    estimator = ScriptedEstimator(script)
    values = {"image_topics": [f"/{name}/{t}" for t in topics], "detections_topic": f"/{name}/detections",
              "publish_vision_msgs": False, "diagnostics_period_s": 0.0, **parameters}
    added = []
    try:
        node = live.module.AgeGenderNode(name, context=live.session.context, estimator=estimator,
                                         parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        added.append(live.session.add(node))
        probes = [live.session.add(Probe(image_topic=f"/{name}/{t}", detections_topic=f"/{name}/detections",
                                         context=live.session.context, name=f"{name}_probe_{i}"))
                  for i, t in enumerate(topics)]
        added += probes
        for probe in probes:
            assert probe.wait_ready(20.0), f"{name}: node and probe did not connect"
        yield node, estimator, probes
    finally:
        for entity in reversed(added):
            live.session.executor.remove_node(entity)
            live.session.nodes.remove(entity)
            entity.destroy_node()


FRAME = np.full((240, 320, 3), 90, np.uint8)


def test_a_failing_estimator_is_counted_logged_and_survived(live, capfd):
    def script(call, frame):
        return RuntimeError(f"boom {call}") if call <= 3 else [_face(30)]

    with _scripted_node(live, "scripted_failing", script, warn_throttle_s=60.0) as (node, estimator, (probe,)):
        for _ in range(3):
            stamp = probe.publish_frame(FRAME)
            assert probe.wait_detections(stamp, 1.5) is None  # a failed frame publishes nothing
        deadline = time.monotonic() + 10
        while node.stats["failures"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.stats["failures"] == 3 and node.stats["processed"] == 0
        _, msg = probe.request(FRAME, timeout=10)  # the worker lives on
        assert len(msg.faces) == 1 and node._worker.is_alive()
    err = capfd.readouterr().err
    failed = [ln for ln in err.splitlines() if "processing a frame failed" in ln]
    assert len(failed) == 1 and "/scripted_failing/image: processing a frame failed: RuntimeError: boom 1" in \
        failed[0], failed  # throttled: one line for three failures


def test_smoothing_averages_a_track_and_tracking_off_does_not(live):
    from rclpy.parameter import Parameter

    ages = [20.0, 40.0, 20.0, 40.0]
    p_male = [0.9, 0.1, 0.9, 0.1]

    def script(call, frame):
        i = (call - 1) % 4
        return [_face(ages[i], p_male[i])]

    with _scripted_node(live, "scripted_smooth", script, smoothing=0.6) as (node, _, (probe,)):
        answers = [probe.request(FRAME, timeout=10)[1].faces[0] for _ in range(4)]
        assert len({f.track_id for f in answers}) == 1 and answers[0].track_id > 0
        reported = [f.age for f in answers]
        assert reported[0] == pytest.approx(20.0)
        assert reported[1] == pytest.approx(30.0, abs=0.01)  # the first frames of a track are averaged equally
        assert all(25.0 < a < 35.0 for a in reported[1:]), reported  # never the raw 20 / 40 again
        assert all(0.2 < f.p_male < 0.8 for f in answers[1:]), [f.p_male for f in answers]
        # Live: tracking off -> per-frame values and track_id 0, from the next frame.
        assert node.set_parameters([Parameter("tracking", value=False)])[0].successful
        raw = [probe.request(FRAME, timeout=10)[1].faces[0] for _ in range(2)]
        assert sorted(f.age for f in raw) == [20.0, 40.0] and {f.track_id for f in raw} == {0}


def test_max_rate_hz_limits_the_frames_processed(live):
    from rclpy.parameter import Parameter

    with _scripted_node(live, "scripted_rate", lambda call, frame: [], max_rate_hz=4.0) as (node, _, (probe,)):
        probe.request(FRAME, timeout=10)
        before = node.stats["processed"]
        start = time.monotonic()
        while time.monotonic() - start < 3.0:  # 30 frames/s for 3 s
            probe.publish_frame(FRAME)
            time.sleep(1 / 30)
        time.sleep(0.5)
        processed = node.stats["processed"] - before
        assert 8 <= processed <= 4.0 * 3.5 + 2, processed  # about 4 per second, never 30
        # Live: the cap lifted, the next frames are processed as fast as they come.
        assert node.set_parameters([Parameter("max_rate_hz", value=0.0)])[0].successful
        before, start = node.stats["processed"], time.monotonic()
        while time.monotonic() - start < 2.0:
            probe.publish_frame(FRAME)
            time.sleep(1 / 30)
        time.sleep(0.5)
        assert node.stats["processed"] - before > 4.0 * 2.5 + 2


def test_several_topics_are_read_in_turn(live):
    seen = []

    def script(call, frame):
        seen.append(int(frame[0, 0, 0]))
        time.sleep(0.05)  # slower than the publishers: the worker must pick between the topics
        return [_face(30)]

    with _scripted_node(live, "scripted_rr", script, topics=("a", "b", "c")) as (node, _, probes):
        frames = [np.full((240, 320, 3), value, np.uint8) for value in (10, 20, 30)]
        start = time.monotonic()
        while time.monotonic() - start < 2.0:
            for probe, frame in zip(probes, frames):
                probe.publish_frame(frame)
            time.sleep(0.01)
        time.sleep(0.5)
    counts = [seen.count(v) for v in (10, 20, 30)]
    assert min(counts) >= 5 and max(counts) - min(counts) <= max(3, sum(counts) // 5), counts
    # Round robin: no topic twice in a row while all three have frames waiting.
    busy = seen[2:len(seen) - 2]
    assert sum(a == b for a, b in zip(busy, busy[1:])) <= 2, seen


def test_diagnostics_levels(live):
    from diagnostic_msgs.msg import DiagnosticStatus

    def statuses(name):
        return [s for a in list(live.probe.diagnostics) for s in a.status if s.name == f"{name}: age/gender"]

    def wait_status(name, level, seconds=6.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [s for s in statuses(name) if s.level == level]
            if found:
                return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"no level {level!r} status from {name}: {[(s.level, s.message) for s in statuses(name)]}")

    name = "scripted_diag"
    with _scripted_node(live, name, lambda call, frame: [_face(30)], diagnostics_period_s=0.5) as (node, _, (probe,)):
        idle = wait_status(name, DiagnosticStatus.WARN)
        assert idle.message == f"no images received on /{name}/image"
        stop = time.monotonic() + 3.0
        while time.monotonic() < stop:
            probe.publish_frame(FRAME)
            time.sleep(0.05)
        ok = wait_status(name, DiagnosticStatus.OK)
        assert ok.message.endswith("frames/s, latency p50 " + ok.message.split("latency p50 ")[1])
        values = {kv.key: kv.value for kv in ok.values}
        assert values["detector"] == "scripted" and int(values["frames_processed"]) > 0
        # The worker gone: ERROR.
        node._stop.set()
        node._worker.join(timeout=5)
        error = wait_status(name, DiagnosticStatus.ERROR)
        assert error.message == "worker thread stopped"


def test_a_requested_backend_that_is_missing_stops_the_start(live, random_weights):
    from rclpy.parameter import Parameter

    with pytest.raises(live.module.StartupError) as info:
        live.module.AgeGenderNode("no_tensorrt", context=live.session.context, parameter_overrides=[
            Parameter("weights", value=str(random_weights)), Parameter("backend", value="tensorrt")])
    assert info.value.exit_code == 1
    assert str(info.value).startswith("backend tensorrt is not available: ")


def test_unknown_parameter_names_are_warned_about(live, capfd):
    with _scripted_node(live, "scripted_typo", lambda call, frame: [], scor_threshold=0.3):
        pass
    err = capfd.readouterr().err
    assert "[scripted_typo]: ignoring unknown parameter(s) (typo?): scor_threshold" in err, err[-2000:]


def test_live_parameters_apply_from_the_next_frame_and_bad_ones_are_refused(live):
    """The real estimator: max_faces and score_threshold set at run time change the next answer; a bad value is
    refused with the reason and the old one stays; a configure-time parameter is refused while active."""
    from rclpy.parameter import Parameter

    node, probe = live.node, live.probe
    image = cv2.imread(str(SAMPLES / "solvay_1927.jpg"))
    before = len(probe.request(image, "bgr8", timeout=20)[1].faces)
    assert before > 3
    try:
        assert node.set_parameters([Parameter("max_faces", value=3)])[0].successful
        assert len(probe.request(image, "bgr8", timeout=20)[1].faces) == 3
        assert node.set_parameters([Parameter("score_threshold", value=0.99)])[0].successful
        assert len(probe.request(image, "bgr8", timeout=20)[1].faces) == 0
        for name, value, reason in [("score_threshold", 1.5, "score_threshold"),
                                    ("max_faces", "many", "Wrong parameter type"),  # rclpy's own check
                                    ("detector", "haar", "detector cannot change while the node is active")]:
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert not result.successful and reason in result.reason, (name, result.reason)
        assert node.get_parameter("score_threshold").value == 0.99 and node.get_parameter("detector").value == "auto"
        described = node.describe_parameter("detector").additional_constraints
        assert "set only while unconfigured" in described
        assert "live" in node.describe_parameter("score_threshold").additional_constraints
    finally:
        assert node.set_parameters([Parameter("max_faces", value=32), Parameter("score_threshold", value=0.5)])[0] \
            .successful
    assert len(probe.request(image, "bgr8", timeout=20)[1].faces) == before


def test_vision_msgs_detection2d_matches_the_agegender_array(live, astronaut):
    """The real vision_msgs (built in the underlay): one Detection2D per face, its centre and size the face's box
    and its id the track id."""
    vision = ros_import("vision_msgs.msg", "vision_msgs is not installed")
    received = {}
    cond = threading.Condition()

    def keep(msg):
        with cond:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            cond.notify_all()

    from agegender_ros.node import DETECTIONS_QOS

    subscription = live.probe.create_subscription(vision.Detection2DArray, "/agegender/detections_2d", keep,
                                                  DETECTIONS_QOS)
    try:
        deadline = time.monotonic() + 10
        while live.probe.count_publishers("/agegender/detections_2d") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        stamp, msg = live.probe.request(astronaut, "bgr8", frame_id=FRAME_ID, timeout=15)
        with cond:
            assert cond.wait_for(lambda: stamp in received, 10.0), "no Detection2DArray for the frame"
            detections = received[stamp]
    finally:
        live.probe.destroy_subscription(subscription)
    assert detections.header.frame_id == FRAME_ID
    (face,), (det,) = msg.faces, detections.detections
    roi = face.roi
    assert det.bbox.center.position.x == pytest.approx(roi.x_offset + roi.width / 2, abs=1.0)
    assert det.bbox.center.position.y == pytest.approx(roi.y_offset + roi.height / 2, abs=1.0)
    assert det.bbox.size_x == pytest.approx(roi.width, abs=1.0)
    assert det.bbox.size_y == pytest.approx(roi.height, abs=1.0)
    assert det.id == str(face.track_id) and det.header.frame_id == FRAME_ID
    (hypothesis,) = det.results
    assert hypothesis.hypothesis.class_id == "face"
    assert hypothesis.hypothesis.score == pytest.approx(face.score)


def test_echo_yaml_is_what_rosidl_runtime_py_prints(live, astronaut):
    """The demo's fallback printer against the function `ros2 topic echo` itself uses."""
    rosidl_runtime_py = ros_import("rosidl_runtime_py", "rosidl_runtime_py is not installed")
    from agegender_ros.ros_echo import message_to_yaml

    _, msg = live.probe.request(astronaut, "bgr8", timeout=15)
    assert msg.faces
    assert message_to_yaml(msg) == rosidl_runtime_py.message_to_yaml(msg).rstrip("\n")
    empty = live.probe.request(np.full((64, 64, 3), 90, np.uint8), "bgr8", timeout=15)[1]
    assert message_to_yaml(empty) == rosidl_runtime_py.message_to_yaml(empty).rstrip("\n")


def test_arrival_fraction_judges_a_camera_from_its_stamps():
    """How the node tells that a camera's frames get lost on the way (the profile warning)."""
    m = _ros()
    period = 33_333_333
    rng = np.random.default_rng(0)
    assert m.arrival_fraction([i * period for i in range(60)]) == (1.0, pytest.approx(period / 1e9))
    jitter = [i * period + int(rng.normal(0, 4e6)) for i in range(120)]
    assert m.arrival_fraction(jitter)[0] > 0.95
    late = [i * period + (15_000_000 if i % 7 == 3 else 0) for i in range(120)]  # late, then on time again
    assert m.arrival_fraction(late)[0] > 0.95
    for keep in (0.9, 0.7, 0.5, 0.3):
        kept = [i * period + int(rng.normal(0, 2e6)) for i in range(400) if rng.random() < keep]
        fraction, seen_period = m.arrival_fraction(kept)
        assert abs(fraction - keep) < 0.12 and abs(seen_period - period / 1e9) < 0.003, (keep, fraction)
    assert m.arrival_fraction(sorted(rng.integers(0, 10 ** 10, 50))) is None  # not a camera: no judgement
    assert m.arrival_fraction(np.cumsum(rng.uniform(5e7, 3e8, 60)).astype(int)) is None
    assert m.arrival_fraction([i * period for i in range(10)]) is None  # too few


def test_a_failed_configure_leaves_the_managed_node_unconfigured(live, random_weights, capfd):
    """autostart false (a lifecycle manager): configure with missing weights fails with the start-up error and
    the node stays unconfigured and alive; with the weights set, configure and activate work; shutdown from
    active finalizes it. (Foxy/Galactic have no rclpy.lifecycle: skipped there.)"""
    if not live.module.LIFECYCLE:
        pytest.skip("this rclpy has no lifecycle nodes (Foxy, Galactic): the node starts active")
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    node = live.module.AgeGenderNode("managed_test", context=live.session.context, parameter_overrides=[
        Parameter("autostart", value=False), Parameter("weights", value="/nonexistent/model.pt"),
        Parameter("image_topics", value=["/managed_test/image"]), Parameter("detections_topic",
                                                                           value="/managed_test/detections")])
    try:
        assert node.state == "unconfigured" and node.estimator is None
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.state == "unconfigured" and node.estimator is None
        err = capfd.readouterr().err
        assert "weights: file '/nonexistent/model.pt' does not exist" in err, err[-2000:]
        assert node.set_parameters([Parameter("weights", value=str(random_weights))])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS and node.state == "inactive"
        assert node.count_publishers("/managed_test/detections") == 0 and not node._io  # nothing before activate
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS and node.state == "active"
        assert node._worker.is_alive() and len(node._io) >= 2
        # Not live: refused while active, accepted once unconfigured again.
        assert not node.set_parameters([Parameter("detector", value="haar")])[0].successful
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and not node._io
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.estimator is None
        assert node.set_parameters([Parameter("detector", value="haar")])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.estimator.detector.name == "haar"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS  # from active
        assert node.state == "finalized" and node.finalized.is_set() and node.estimator is None
        assert node._worker is None
    finally:
        node.destroy_node()

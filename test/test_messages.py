"""Tests of the agegender_ros/AgeGender and AgeGenderArray messages.

Three layers, each skipped (with the reason) when what it needs is not there:

* ROS-free: the .msg text parses with `rosbags` (pure Python) and a CDR round trip works.
* Built package (`colcon build` + `source install/setup.bash`): the generated `agegender_ros.msg`
  classes import, carry the constants and fields, round-trip through rclpy serialization and produce
  the same CDR bytes and type hash as rosbags.
* Live DDS: an AgeGenderArray goes from one rclpy node to another in this process. Runs only inside a
  private network namespace (`scripts/netns_run.sh`, which sets AGEGENDER_NETNS=1) so discovery traffic
  can never leave the host.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from conftest import ros_import

REPO = Path(__file__).resolve().parent.parent
MSG_DIR = REPO / "msg"

AGE_GENDER_FIELDS = {
    "roi": "sensor_msgs/RegionOfInterest",
    "score": "float",
    "age": "float",
    "age_std": "float",
    "gender": "uint8",
    "gender_confidence": "float",
    "p_male": "float",
    "track_id": "uint32",
}
CONSTANTS = {"GENDER_UNKNOWN": 0, "GENDER_FEMALE": 1, "GENDER_MALE": 2}

# One face per gender code, with values that are exact in float32.
FACES = [
    dict(roi=(10, 20, 64, 48), score=0.875, age=31.5, age_std=2.25, gender=2, gender_confidence=0.75,
         p_male=0.75, track_id=7),
    dict(roi=(300, 5, 120, 100), score=0.5, age=8.0, age_std=0.0, gender=1, gender_confidence=0.9375,
         p_male=0.0625, track_id=0),
    dict(roi=(0, 0, 1, 1), score=0.25, age=70.0, age_std=11.5, gender=0, gender_confidence=0.0,
         p_male=0.5, track_id=4294967295),
]
STAMP = (1700000000, 123456789)
FRAME_ID = "camera_optical_frame"


# ------------------------------------------------------------------------------------------ helpers
def _ros_msgs():
    """The generated message classes; a skip when the package has not been built and sourced, an error where the
    underlay was built (AGEGENDER_REQUIRE_ROS=1: a broken build must not pass as skips)."""
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")
    return ros_import("agegender_ros.msg",
                      "agegender_ros.msg not generated: run `colcon build` and `source install/setup.bash`")


def _ros_array(msg_mod):
    from sensor_msgs.msg import RegionOfInterest

    arr = msg_mod.AgeGenderArray()
    arr.header.stamp.sec, arr.header.stamp.nanosec = STAMP
    arr.header.frame_id = FRAME_ID
    for f in FACES:
        face = msg_mod.AgeGender()
        x, y, w, h = f["roi"]
        face.roi = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)
        for key in AGE_GENDER_FIELDS:
            if key != "roi":
                setattr(face, key, f[key])
        arr.faces.append(face)
    return arr


def _rosbags_store():
    typesys = pytest.importorskip("rosbags.typesys", reason="rosbags not installed (pip install rosbags)")
    store = typesys.get_typestore(typesys.Stores.ROS2_JAZZY)
    types = {}
    for name in ("AgeGender", "AgeGenderArray"):
        text = (MSG_DIR / f"{name}.msg").read_text()
        types.update(typesys.get_types_from_msg(text, f"agegender_ros/msg/{name}"))
    store.register(types)
    return store


def _rosbags_array(store):
    t = store.types
    faces = []
    for f in FACES:
        x, y, w, h = f["roi"]
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=x, y_offset=y, height=h, width=w, do_rectify=False)
        kwargs = {k: f[k] for k in AGE_GENDER_FIELDS if k != "roi"}
        faces.append(t["agegender_ros/msg/AgeGender"](roi=roi, **kwargs))
    header = t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=STAMP[0], nanosec=STAMP[1]), frame_id=FRAME_ID)
    return t["agegender_ros/msg/AgeGenderArray"](header=header, faces=faces)


def _check_ros_array(arr):
    assert (arr.header.stamp.sec, arr.header.stamp.nanosec) == STAMP
    assert arr.header.frame_id == FRAME_ID
    assert len(arr.faces) == len(FACES)
    for face, f in zip(arr.faces, FACES):
        assert (face.roi.x_offset, face.roi.y_offset, face.roi.width, face.roi.height) == f["roi"]
        for key in AGE_GENDER_FIELDS:
            if key != "roi":
                assert getattr(face, key) == f[key], key


# ------------------------------------------------------------------------------- ROS-free (rosbags)
def test_msg_files_document_every_field():
    """Each field line in the .msg files is preceded by a comment line."""
    for name in ("AgeGender", "AgeGenderArray"):
        lines = [ln.strip() for ln in (MSG_DIR / f"{name}.msg").read_text().splitlines()]
        for i, ln in enumerate(lines):
            if ln and not ln.startswith("#") and "=" not in ln:
                assert i > 0 and lines[i - 1].startswith("#"), f"{name}.msg: no comment above {ln!r}"


def test_rosbags_parses_msg_definitions():
    store = _rosbags_store()
    consts, fields = store.fielddefs["agegender_ros/msg/AgeGender"]
    assert {name: value for name, _typ, value in consts} == CONSTANTS
    assert all(typ == "uint8" for _name, typ, _value in consts)
    assert [name for name, _ in fields] == list(AGE_GENDER_FIELDS)
    wire = {name: (desc[1] if desc[0].name == "NAME" else desc[1][0]) for name, desc in fields}
    assert wire == {
        "roi": "sensor_msgs/msg/RegionOfInterest", "score": "float32", "age": "float32", "age_std": "float32",
        "gender": "uint8", "gender_confidence": "float32", "p_male": "float32", "track_id": "uint32",
    }
    ag = store.types["agegender_ros/msg/AgeGender"]
    for name, value in CONSTANTS.items():
        assert getattr(ag, name) == value
    consts, fields = store.fielddefs["agegender_ros/msg/AgeGenderArray"]
    assert consts == []
    assert [name for name, _ in fields] == ["header", "faces"]


def test_rosbags_cdr_round_trip():
    store = _rosbags_store()
    msg = _rosbags_array(store)
    raw = store.serialize_cdr(msg, "agegender_ros/msg/AgeGenderArray")
    back = store.deserialize_cdr(raw, "agegender_ros/msg/AgeGenderArray")
    assert back.header.frame_id == FRAME_ID
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == STAMP
    assert len(back.faces) == len(FACES)
    for face, f in zip(back.faces, FACES):
        assert (face.roi.x_offset, face.roi.y_offset, face.roi.width, face.roi.height) == f["roi"]
        for key in AGE_GENDER_FIELDS:
            if key != "roi":
                assert math.isclose(getattr(face, key), f[key]), key
    empty = store.types["agegender_ros/msg/AgeGenderArray"](header=msg.header, faces=[])
    raw_empty = store.serialize_cdr(empty, "agegender_ros/msg/AgeGenderArray")
    assert store.deserialize_cdr(raw_empty, "agegender_ros/msg/AgeGenderArray").faces == []


# ----------------------------------------------------------------------- built package (rclpy, msg)
def test_generated_classes_constants_and_fields():
    m = _ros_msgs()
    for name, value in CONSTANTS.items():
        assert getattr(m.AgeGender, name) == value
    assert m.AgeGender.get_fields_and_field_types() == AGE_GENDER_FIELDS
    assert m.AgeGenderArray.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "faces": "sequence<agegender_ros/AgeGender>",
    }
    face = m.AgeGender()
    assert face.gender == m.AgeGender.GENDER_UNKNOWN
    assert face.track_id == 0 and face.age == 0.0
    assert face.roi.width == 0 and face.roi.do_rectify is False
    assert m.AgeGenderArray().faces == []


def test_generated_module_sits_next_to_python_package():
    """`agegender_ros.msg` and the hand-written modules import as one package."""
    _ros_msgs()
    import agegender_ros
    import agegender_ros.msg

    assert agegender_ros.__version__
    msg_dir = Path(agegender_ros.msg.__file__).resolve().parent.parent
    assert any(Path(p).resolve() == msg_dir for p in agegender_ros.__path__)


def test_rclpy_serialization_round_trip():
    m = _ros_msgs()
    from rclpy.serialization import deserialize_message, serialize_message

    arr = _ros_array(m)
    raw = serialize_message(arr)
    back = deserialize_message(raw, m.AgeGenderArray)
    _check_ros_array(back)
    assert back == arr


def test_rclpy_and_rosbags_agree_on_wire_format():
    """Each side reads the other's CDR bytes (bytes differ only in padding: Fast CDR leaves it unset)."""
    m = _ros_msgs()
    store = _rosbags_store()
    from rclpy.serialization import deserialize_message, serialize_message

    typename = "agegender_ros/msg/AgeGenderArray"
    from_ros = bytes(serialize_message(_ros_array(m)))
    from_rosbags = bytes(store.serialize_cdr(_rosbags_array(store), typename))
    assert len(from_ros) == len(from_rosbags)
    _check_ros_array(deserialize_message(from_rosbags, m.AgeGenderArray))
    assert store.deserialize_cdr(from_ros, typename) == _rosbags_array(store)


def test_type_hash_matches_rosbags():
    """The RIHS01 type hashes that rosidl generated equal those rosbags computes from the .msg text."""
    _ros_msgs()
    from ament_index_python.packages import get_package_share_directory

    store = _rosbags_store()
    share = Path(get_package_share_directory("agegender_ros"))
    for name in ("AgeGender", "AgeGenderArray"):
        desc = json.loads((share / "msg" / f"{name}.json").read_text())
        hashes = {h["type_name"]: h["hash_string"] for h in desc["type_hashes"]}
        assert hashes[f"agegender_ros/msg/{name}"] == store.hash_rihs01(f"agegender_ros/msg/{name}")


# ------------------------------------------------------------------------------- live publish/subscribe
def test_publish_subscribe_between_two_nodes():
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh "
                    "(sets AGEGENDER_NETNS=1)")
    m = _ros_msgs()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        pub_node = rclpy.create_node("agegender_test_pub", context=ctx)
        sub_node = rclpy.create_node("agegender_test_sub", context=ctx)
        received = []
        sub_node.create_subscription(m.AgeGenderArray, "agegender/faces", received.append, qos)
        pub = pub_node.create_publisher(m.AgeGenderArray, "agegender/faces", qos)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(pub_node)
        executor.add_node(sub_node)

        arr = _ros_array(m)
        deadline = time.monotonic() + 20.0
        while not received and time.monotonic() < deadline:
            if pub.get_subscription_count() > 0:
                pub.publish(arr)
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)

    assert received, "no AgeGenderArray received within 20 s"
    _check_ros_array(received[0])
    assert received[0] == arr

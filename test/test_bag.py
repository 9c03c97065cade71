"""`agegender bag IN --out OUT` (agegender_ros/bag.py): offline processing of recorded rosbag2 files.

Each test writes a real rosbag2 (MCAP or sqlite3) with the rosbags library -- raw images of the bundled
astronaut photo, a JPEG CompressedImage, a non-image topic, a malformed image -- runs the command through the
CLI's main function and reads the result back with rosbags (types registered independently of the command,
from msg/*.msg). No ROS installation or DDS is involved. The estimator uses random-init weights (conftest):
the faces come from the real detector, ages and genders are not checked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

rosbags = pytest.importorskip("rosbags", reason="rosbags is not installed (pip install rosbags)")
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from agegender_ros import bag as bag_module  # noqa: E402
from agegender_ros.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "agegender_ros" / "samples"
# astronaut.jpg (512 x 512): the face lies around x 180-270, y 60-180.
ASTRONAUT_FACE = (180, 60, 270, 180)
RAW, COMPRESSED, CHATTER = "/cam/image_raw", "/cam2/image_raw/compressed", "/chatter"
T0 = 1_700_000_000_000_000_000

pytestmark = pytest.mark.timeout(300)


def _typestore():
    """The ROS 2 default types plus AgeGender / AgeGenderArray straight from msg/*.msg."""
    store = get_typestore(Stores.LATEST)
    types = {}
    for name in ("AgeGender", "AgeGenderArray"):
        types.update(get_types_from_msg((REPO / "msg" / f"{name}.msg").read_text(), f"agegender_ros/msg/{name}"))
    store.register(types)
    return store


STORE = _typestore()
T = STORE.types


@pytest.fixture(scope="module")
def astronaut():
    image = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    assert image is not None and image.shape == (512, 512, 3)
    return image


def _header(stamp_ns: int, frame_id: str):
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                    frame_id=frame_id)


def _image(frame, stamp_ns: int, encoding: str = "bgr8", step=None, data=None):
    pixels = frame if encoding == "bgr8" else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    height, width = frame.shape[:2]
    return T["sensor_msgs/msg/Image"](
        header=_header(stamp_ns, "camera_optical_frame"), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * 3 if step is None else step,
        data=np.frombuffer(pixels.tobytes(), np.uint8) if data is None else data)


def _compressed(frame, stamp_ns: int):
    data = cv2.imencode(".jpg", frame)[1].reshape(-1)
    return T["sensor_msgs/msg/CompressedImage"](header=_header(stamp_ns, "camera2"),
                                                format="bgr8; jpeg compressed bgr8", data=data)


def _string(text: str):
    return T["std_msgs/msg/String"](data=text)


def write_bag(path: Path, messages: list, storage: str = "mcap", zstd: bool = False) -> None:
    """messages: (topic, msgtype, bag timestamp ns, message object) in time order. zstd: compressed MCAP chunks
    (what `ros2 bag record -s mcap` writes by default)."""
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap"
                    else StoragePlugin.SQLITE3)
    if zstd:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {}
        for topic, msgtype, timestamp, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
            writer.write(conns[topic], timestamp, STORE.serialize_cdr(msg, msgtype))


def read_bag(path: Path) -> dict:
    """topic -> list of (msgtype, bag timestamp, message, raw bytes), and the storage plugin under '_storage'."""
    out: dict = {}
    with Reader(path) as reader:
        for conn, timestamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((conn.msgtype, timestamp, STORE.deserialize_cdr(raw, conn.msgtype),
                                                   raw))
    files = [p.suffix for p in path.iterdir()]
    out["_storage"] = "mcap" if ".mcap" in files else "sqlite3" if ".db3" in files else "?"
    return out


def standard_messages(frame) -> list:
    """3 raw frames (bgr8, rgb8, bgr8) of the astronaut, 2 JPEGs, 2 strings, 1 malformed raw image."""
    ms = 1_000_000
    image, compressed = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    return [
        (CHATTER, "std_msgs/msg/String", T0, _string("hello")),
        (RAW, image, T0 + 10 * ms, _image(frame, T0 + 1 * ms)),
        (COMPRESSED, compressed, T0 + 20 * ms, _compressed(frame, T0 + 2 * ms)),
        (RAW, image, T0 + 40 * ms, _image(frame, T0 + 33 * ms, "rgb8")),
        (RAW, image, T0 + 50 * ms, _image(frame, T0 + 44 * ms, step=100)),  # malformed: step < a row
        (CHATTER, "std_msgs/msg/String", T0 + 60 * ms, _string("world")),
        (COMPRESSED, compressed, T0 + 70 * ms, _compressed(frame, T0 + 66 * ms)),
        (RAW, image, T0 + 80 * ms, _image(frame, T0 + 77 * ms)),
    ]


def run_bag(args: list, weights: Path) -> int:
    return main(["bag"] + [str(a) for a in args] + ["--weights", str(weights), "--backend", "onnxruntime",
                                                    "--detector", "scrfd", "--no-progress"])


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _centre(face):
    return face.roi.x_offset + face.roi.width / 2, face.roi.y_offset + face.roi.height / 2


def _check_detections(images: list, detections: list, expect_face=True) -> None:
    """Each readable image has one AgeGenderArray with its header and bag timestamp, and one face on it."""
    assert len(detections) == len(images)
    for (_, t_img, img, _), (msgtype, t_det, det, _) in zip(images, detections):
        assert msgtype == "agegender_ros/msg/AgeGenderArray"
        assert t_det == t_img
        assert _stamp(det) == _stamp(img) and det.header.frame_id == img.header.frame_id
        if expect_face:
            assert len(det.faces) == 1
            face = det.faces[0]
            x, y = _centre(face)
            assert ASTRONAUT_FACE[0] <= x <= ASTRONAUT_FACE[2] and ASTRONAUT_FACE[1] <= y <= ASTRONAUT_FACE[3]
            assert 0.5 <= face.score <= 1.0 and face.gender in (1, 2) and 0.0 <= face.p_male <= 1.0
            assert 0.5 <= face.gender_confidence <= 1.0 and np.isfinite(face.age)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(tmp_path, astronaut, random_weights, storage, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    write_bag(source, standard_messages(astronaut), storage)
    assert run_bag([source, "--out", out], random_weights) == 0
    captured = capsys.readouterr()
    result = read_bag(out)
    assert result.pop("_storage") == storage  # same storage as the input by default
    assert set(result) == {CHATTER, RAW, COMPRESSED, RAW + "/agegender", COMPRESSED + "/agegender"}

    original = read_bag(source)
    for topic in (CHATTER, RAW, COMPRESSED):  # copied unchanged: same messages, timestamps and bytes
        assert [(t, bytes(r)) for _, t, _, r in result[topic]] == [(t, bytes(r)) for _, t, _, r in original[topic]]
    assert [m.data for _, _, m, _ in result[CHATTER]] == ["hello", "world"]

    raw_ok = [m for m in result[RAW] if m[2].step != 100]  # the malformed one gets no AgeGenderArray
    assert len(result[RAW]) == 4 and len(raw_ok) == 3
    _check_detections(raw_ok, result[RAW + "/agegender"])
    _check_detections(result[COMPRESSED], result[COMPRESSED + "/agegender"])
    # Tracked per topic: one stable id for the face on each topic, distinct between the topics.
    raw_ids = {d[2].faces[0].track_id for d in result[RAW + "/agegender"]}
    jpeg_ids = {d[2].faces[0].track_id for d in result[COMPRESSED + "/agegender"]}
    assert len(raw_ids) == 1 and len(jpeg_ids) == 1 and raw_ids != jpeg_ids and 0 not in raw_ids | jpeg_ids

    assert "malformed image" in captured.err and RAW in captured.err and "step 100" in captured.err
    assert f"{RAW}: 3 image(s), 3 face(s) -> {RAW}/agegender; 1 malformed image(s) skipped" in captured.out
    assert f"{COMPRESSED}: 2 image(s), 2 face(s)" in captured.out


def test_single_mcap_file_to_sqlite3_without_tracking(tmp_path, astronaut, random_weights):
    source, out = tmp_path / "in", tmp_path / "out"
    write_bag(source, standard_messages(astronaut), "mcap")
    (mcap,) = source.glob("*.mcap")  # the bare file, without metadata.yaml
    assert run_bag([mcap, "--out", out, "--format", "sqlite3", "--no-tracking"], random_weights) == 0
    result = read_bag(out)
    assert result.pop("_storage") == "sqlite3"
    assert len(result[RAW + "/agegender"]) == 3 and len(result[COMPRESSED + "/agegender"]) == 2
    assert all(f.track_id == 0 for _, _, d, _ in result[RAW + "/agegender"] for f in d.faces)


def test_topics_selection(tmp_path, astronaut, random_weights, capsys):
    source, out = tmp_path / "in", tmp_path / "out"
    write_bag(source, standard_messages(astronaut), "mcap")
    assert run_bag([source, "--out", out, "--topics", COMPRESSED], random_weights) == 0
    result = read_bag(out)
    result.pop("_storage")
    assert set(result) == {CHATTER, RAW, COMPRESSED, COMPRESSED + "/agegender"}  # every topic kept
    _check_detections(result[COMPRESSED], result[COMPRESSED + "/agegender"])
    capsys.readouterr()

    # A topic that is not there, or not an image topic: a clear error, nothing written.
    for topic, expected in (("/nope", "not in the bag: /nope"), (CHATTER, "not an Image/CompressedImage topic")):
        assert run_bag([source, "--out", tmp_path / "bad", "--topics", topic], random_weights) == 2
        err = capsys.readouterr().err
        assert expected in err and f"image topics in the bag: {RAW}, {COMPRESSED}"[:40] in err
        assert not (tmp_path / "bad").exists()


def test_reprocessing_an_output_replaces_its_results(tmp_path, astronaut, random_weights):
    source, first, second = tmp_path / "in", tmp_path / "first", tmp_path / "second"
    write_bag(source, standard_messages(astronaut)[:3], "mcap")
    assert run_bag([source, "--out", first], random_weights) == 0
    assert run_bag([first, "--out", second], random_weights) == 0
    result = read_bag(second)
    assert len(result[RAW + "/agegender"]) == 1 and len(result[COMPRESSED + "/agegender"]) == 1


def _many_frames(frame, n: int) -> list:
    ms = 1_000_000
    msgs = [(CHATTER, "std_msgs/msg/String", T0, _string("start"))]
    for i in range(n):
        msgs.append((RAW, "sensor_msgs/msg/Image", T0 + (i + 1) * 100 * ms, _image(frame, T0 + (i + 1) * 100 * ms)))
    return msgs


@pytest.mark.parametrize("zstd", [False, True], ids=["plain", "zstd"])
def test_truncated_mcap_writes_what_it_could(tmp_path, astronaut, random_weights, capsys, zstd):
    """A recorder killed mid-write: no summary, no footer, the last chunk cut off."""
    pytest.importorskip("mcap", reason="mcap is not installed (pip install mcap)")
    source, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(0)  # noise around the face: zstd cannot shrink a chunk to nothing
    frame = astronaut.copy()
    frame[300:] = rng.integers(0, 256, frame[300:].shape, dtype=np.uint8)
    write_bag(source, _many_frames(frame, 8), "mcap", zstd)  # 786 kB per frame: several 1 MiB chunks
    (mcap,) = source.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    assert run_bag([source, "--out", out], random_weights) == 1
    err = capsys.readouterr().err
    assert str(mcap) in err and "truncated" in err, err
    result = read_bag(out)  # a complete, readable bag with what came before the damage
    images = result[RAW]
    assert 2 <= len(images) < 8
    _check_detections(images, result[RAW + "/agegender"])
    assert [m.data for _, _, m, _ in result[CHATTER]] == ["start"]


def test_truncated_mcap_keeps_the_whole_messages_of_a_cut_off_uncompressed_chunk(tmp_path):
    """The file ends inside message m30 of an uncompressed chunk: m0..m29 are read, the cut-off one is not."""
    pytest.importorskip("mcap", reason="mcap is not installed (pip install mcap)")
    source = tmp_path / "in"
    write_bag(source, [(CHATTER, "std_msgs/msg/String", T0 + i, _string(f"m{i}")) for i in range(50)], "mcap")
    (mcap,) = source.glob("*.mcap")  # one chunk holds every message
    data = mcap.read_bytes()
    mcap.write_bytes(data[: data.index(b"m30") + 1])
    salvage = bag_module.McapSalvage([mcap])
    texts = [STORE.deserialize_cdr(raw, conn.msgtype).data for conn, _, raw in salvage.messages()]
    assert texts == [f"m{i}" for i in range(30)]
    assert [(c.topic, c.msgtype) for c in salvage.connections] == [(CHATTER, "std_msgs/msg/String")]
    assert salvage.damage.startswith(f"{mcap}: truncated"), salvage.damage


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_sqlite3_gives_a_clear_error(tmp_path, astronaut, random_weights, capsys, damage):
    source, out = tmp_path / "in", tmp_path / "out"
    write_bag(source, _many_frames(astronaut, 4), "sqlite3")
    (db,) = source.glob("*.db3")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0" * 100 + data[100:])
    code = run_bag([source, "--out", out], random_weights)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "corrupt" in err and str(source) in err, err
    if out.exists():  # whatever was written before the damage is a valid bag, each image with its detections
        result = read_bag(out)
        result.pop("_storage")
        assert set(result) <= {CHATTER, RAW, RAW + "/agegender"}, set(result)
        if RAW in result:
            _check_detections(result[RAW], result.get(RAW + "/agegender", []))


def test_not_a_bag_and_existing_output(tmp_path, random_weights, capsys):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"this is not a bag at all" * 10)
    assert run_bag([junk, "--out", tmp_path / "out"], random_weights) == 1
    err = capsys.readouterr().err
    assert str(junk) in err and "error:" in err
    assert run_bag([tmp_path / "missing", "--out", tmp_path / "out2"], random_weights) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert run_bag([junk, "--out", tmp_path / "exists"], random_weights) == 2
    assert "exists already" in capsys.readouterr().err


def test_bag_without_images(tmp_path, random_weights, capsys):
    source = tmp_path / "in"
    write_bag(source, [(CHATTER, "std_msgs/msg/String", T0, _string("x"))], "mcap")
    assert run_bag([source, "--out", tmp_path / "out"], random_weights) == 2
    assert "no sensor_msgs/Image or sensor_msgs/CompressedImage topic" in capsys.readouterr().err


def test_detections_topic_naming():
    assert bag_module.detections_topic("/camera/image_raw") == "/camera/image_raw/agegender"
    assert bag_module.detections_topic("/cam/image_raw/compressed") == "/cam/image_raw/compressed/agegender"


def test_message_types_match_the_ros_build():
    """The AgeGenderArray definition the command writes hashes like the one rosidl generated (when built)."""
    store = bag_module.TypeRegistry().store
    assert store.hash_rihs01("agegender_ros/msg/AgeGenderArray") == STORE.hash_rihs01(
        "agegender_ros/msg/AgeGenderArray")
    built = []
    for prefix in [str(REPO / "install" / "agegender_ros")] + os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        path = Path(prefix) / "share" / "agegender_ros" / "msg" / "AgeGenderArray.json"
        if prefix and path.is_file():
            built.append(path)
    if not built:
        pytest.skip("package not built with colcon: no rosidl type hash to compare with")
    hashes = {h["type_name"]: h["hash_string"] for h in json.loads(built[0].read_text())["type_hashes"]}
    assert store.hash_rihs01("agegender_ros/msg/AgeGenderArray") == hashes["agegender_ros/msg/AgeGenderArray"]
    assert store.hash_rihs01("agegender_ros/msg/AgeGender") == hashes["agegender_ros/msg/AgeGender"]


def test_msg_files_found_from_an_installed_share_dir(tmp_path, monkeypatch):
    """Outside the source tree the .msg files come from <prefix>/share/agegender_ros/msg (ROS or pip install)."""
    share = tmp_path / "prefix" / "share" / "agegender_ros" / "msg"
    share.mkdir(parents=True)
    for name in ("AgeGender.msg", "AgeGenderArray.msg"):
        (share / name).write_text((REPO / "msg" / name).read_text())
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    assert share in bag_module.msg_dirs()
    real = bag_module.msg_dirs
    monkeypatch.setattr(bag_module, "msg_dirs", lambda: [d for d in real() if d != REPO / "msg"])
    types = bag_module.agegender_types()
    assert set(types) >= {"agegender_ros/msg/AgeGender", "agegender_ros/msg/AgeGenderArray"}


def test_estimator_failure_is_reported_and_exits_1(tmp_path, astronaut, capsys, monkeypatch):
    """An image the estimator fails on: warned, counted, no AgeGenderArray, the run goes on, exit status 1."""
    calls = []

    def flaky(frame):
        calls.append(frame.shape)
        if len(calls) == 2:
            raise RuntimeError("backend exploded")
        return []

    monkeypatch.setattr(bag_module, "build_estimator", lambda args: flaky)
    source, out = tmp_path / "in", tmp_path / "out"
    write_bag(source, _many_frames(astronaut, 3), "mcap")
    assert main(["bag", str(source), "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "processing an image failed: RuntimeError: backend exploded" in captured.err
    assert f"{RAW}: 2 image(s), 0 face(s) -> {RAW}/agegender; processing failed on 1 image(s)" in captured.out
    result = read_bag(out)
    assert len(result[RAW]) == 3 and len(result[RAW + "/agegender"]) == 2
    assert all(list(d.faces) == [] for _, _, d, _ in result[RAW + "/agegender"])


# ------------------------------------------------------------------------ what recorded bags hold in the wild
BATTERY = "my_robot/msg/Battery"
BATTERY_DEF = "float32 voltage\nuint8 percent\nstring name\n"


def test_custom_and_unreadable_message_definitions(tmp_path, astronaut, random_weights, capsys):
    """A topic of a package the reader does not have (its definition is in the bag), and one whose definition
    nobody can parse: both copied unchanged, the first readable from OUT's own definition; images processed."""
    source, out = tmp_path / "in", tmp_path / "out"
    store = _typestore()
    store.register(get_types_from_msg(BATTERY_DEF, BATTERY))
    battery = store.types[BATTERY](voltage=12.5, percent=87, name="main")
    writer = Writer(source, version=9, storage_plugin=StoragePlugin.MCAP)
    with writer:
        image_conn = writer.add_connection(RAW, "sensor_msgs/msg/Image", typestore=store)
        battery_conn = writer.add_connection("/battery", BATTERY, typestore=store)
        odd_conn = writer.add_connection("/odd", "odd_pkg/msg/Odd", msgdef="float32 voltage\nuint8 ::percent",
                                         rihs01="RIHS01_" + "ab" * 32)  # a definition no parser reads
        writer.write(battery_conn, T0, store.serialize_cdr(battery, BATTERY))
        writer.write(odd_conn, T0 + 1, b"\x00\x01\x00\x00\x07\x00\x00\x00")
        writer.write(image_conn, T0 + 2, store.serialize_cdr(_image(astronaut, T0 + 2), "sensor_msgs/msg/Image"))
    assert run_bag([source, "--out", out], random_weights) == 0
    err = capsys.readouterr().err
    assert "odd_pkg/msg/Odd: unreadable message definition" in err, err
    with Reader(out) as reader:
        conns = {c.topic: c for c in reader.connections}
        assert set(conns) == {RAW, "/battery", "/odd", RAW + "/agegender"}
        assert conns["/battery"].msgtype == BATTERY and "percent" in conns["/battery"].msgdef.data
        rows = {c.topic: (t, bytes(raw)) for c, t, raw in reader.messages()}
    assert rows["/odd"] == (T0 + 1, b"\x00\x01\x00\x00\x07\x00\x00\x00")  # as recorded
    # Read back with OUT's own definition of the custom type, not the test's.
    fresh = get_typestore(Stores.EMPTY)
    fresh.register(get_types_from_msg(conns["/battery"].msgdef.data, BATTERY))
    again = fresh.deserialize_cdr(rows["/battery"][1], BATTERY)
    assert (again.voltage, again.percent, again.name) == (12.5, 87, "main")
    detections = STORE.deserialize_cdr(rows[RAW + "/agegender"][1], "agegender_ros/msg/AgeGenderArray")
    assert len(detections.faces) == 1 and _stamp(detections) == T0 + 2


def _split_bag(tmp_path, parts: list) -> Path:
    """A rosbag2 bag split into several MCAP files (what `ros2 bag record --max-bag-size` writes): each part
    written as its own bag, then put in one folder under one metadata.yaml that lists the files in order."""
    import shutil

    import yaml

    split = tmp_path / "split"
    split.mkdir()
    infos, names = [], []
    for i, messages in enumerate(parts):
        part = tmp_path / f"part{i}"
        write_bag(part, messages, "mcap")
        (mcap,) = part.glob("*.mcap")
        names.append(f"split_{i}.mcap")
        shutil.copy(mcap, split / names[-1])
        infos.append(yaml.safe_load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"])
    info = infos[0]
    info["relative_file_paths"] = names
    info["message_count"] = sum(i["message_count"] for i in infos)
    end = max(i["starting_time"]["nanoseconds_since_epoch"] + i["duration"]["nanoseconds"] for i in infos)
    info["duration"]["nanoseconds"] = end - info["starting_time"]["nanoseconds_since_epoch"]
    counts: dict = {}
    for part_info in infos:
        for entry in part_info["topics_with_message_count"]:
            name = entry["topic_metadata"]["name"]
            if name in counts:
                counts[name]["message_count"] += entry["message_count"]
            else:
                counts[name] = entry
    info["topics_with_message_count"] = list(counts.values())
    info["files"] = [dict(path=name, starting_time=i["starting_time"], duration=i["duration"],
                          message_count=i["message_count"]) for name, i in zip(names, infos)]
    (split / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))
    return split


def test_split_bag_is_read_across_its_files(tmp_path, astronaut, random_weights, capsys):
    messages = standard_messages(astronaut)
    source, out = _split_bag(tmp_path, [messages[:4], messages[4:]]), tmp_path / "out"
    assert run_bag([source, "--out", out], random_weights) == 0
    result = read_bag(out)
    result.pop("_storage")
    assert [m.data for _, _, m, _ in result[CHATTER]] == ["hello", "world"]  # from both files
    raw_ok = [m for m in result[RAW] if m[2].step != 100]
    assert len(result[RAW]) == 4 and len(raw_ok) == 3
    _check_detections(raw_ok, result[RAW + "/agegender"])
    _check_detections(result[COMPRESSED], result[COMPRESSED + "/agegender"])
    # One track across the file boundary.
    assert len({d[2].faces[0].track_id for d in result[RAW + "/agegender"]}) == 1
    assert f"{RAW}: 3 image(s), 3 face(s)" in capsys.readouterr().out


def test_topics_on_a_salvaged_mcap(tmp_path, astronaut, random_weights, capsys):
    """--topics on an MCAP file cut off by a killed recorder: only the named topic is processed, everything
    readable is copied, exit status 1 for the damage."""
    pytest.importorskip("mcap", reason="mcap is not installed (pip install mcap)")
    source, out = tmp_path / "in", tmp_path / "out"
    ms = 1_000_000
    messages = [(CHATTER, "std_msgs/msg/String", T0, _string("start"))]
    for i in range(6):
        messages.append((RAW, "sensor_msgs/msg/Image", T0 + (2 * i + 1) * 50 * ms, _image(astronaut, T0 + i)))
        messages.append((COMPRESSED, "sensor_msgs/msg/CompressedImage", T0 + (2 * i + 2) * 50 * ms,
                         _compressed(astronaut, T0 + 100 + i)))
    write_bag(source, messages, "mcap")
    (mcap,) = source.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.7)])
    assert run_bag([source, "--out", out, "--topics", COMPRESSED], random_weights) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and str(mcap) in err, err
    result = read_bag(out)
    result.pop("_storage")
    assert RAW + "/agegender" not in result and COMPRESSED + "/agegender" in result
    assert 1 <= len(result[COMPRESSED]) <= 6 and len(result[RAW]) >= 1  # the other image topic: copied only
    _check_detections(result[COMPRESSED], result[COMPRESSED + "/agegender"])


def _chunks(data: bytes) -> list:
    """(offset, length) of each MCAP Chunk record (opcode 0x06) of a file's bytes."""
    import struct

    chunks, i = [], 8  # after the magic
    while i + 9 <= len(data):
        opcode, length = data[i], struct.unpack_from("<Q", data, i + 1)[0]
        if opcode == 0x06:
            chunks.append((i, length))
        if opcode == 0x02:  # footer
            break
        i += 9 + length
    return chunks


def _add_chunk_crcs(path: Path) -> list:
    """Fill in each uncompressed chunk's CRC-32, as `ros2 bag record` (the mcap C++ writer) does and rosbags'
    writer does not. Returns the chunks' (offset, length)."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    chunks = _chunks(bytes(data))
    for offset, _ in chunks:
        body = offset + 9
        compression_length = struct.unpack_from("<I", data, body + 28)[0]
        assert compression_length == 0  # uncompressed chunks
        records_length = struct.unpack_from("<Q", data, body + 32)[0]
        records = bytes(data[body + 40:body + 40 + records_length])
        struct.pack_into("<I", data, body + 24, zlib.crc32(records))
    path.write_bytes(bytes(data))
    return chunks


@pytest.mark.parametrize("damage", ["payload", "records"])
def test_a_corrupt_chunk_in_the_middle(tmp_path, astronaut, random_weights, capsys, damage):
    """Bytes overwritten inside an MCAP chunk (a bad disk block), the file otherwise whole: in an image's pixels
    (caught by the chunk's CRC-32, which `ros2 bag record` writes) or across the chunk's record framing: a clear
    error naming the file, exit status 1, and OUT a valid bag with what came before the damaged chunk.
    (A chunk written without a CRC -- rosbags' own writer -- cannot show damage inside a message's data.)"""
    source, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(0)
    frame = astronaut.copy()
    frame[300:] = rng.integers(0, 256, frame[300:].shape, dtype=np.uint8)
    write_bag(source, _many_frames(frame, 8), "mcap")  # 786 kB per frame: several 1 MiB chunks
    (mcap,) = source.glob("*.mcap")
    chunks = _add_chunk_crcs(mcap)
    assert len(chunks) >= 4
    offset, length = chunks[len(chunks) // 2]
    data = bytearray(mcap.read_bytes())
    start = offset + 9 + 40 + (length - 40) // 2 if damage == "payload" else offset + 9 + 40
    data[start:start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    mcap.write_bytes(bytes(data))
    code = run_bag([source, "--out", out], random_weights)
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: corrupt or truncated bag: {source}: Chunk checksum mismatch" in err or \
        f"error: corrupt or truncated bag: {source}" in err, err
    assert "read before the damage" in err
    result = read_bag(out)
    assert 1 <= len(result[RAW]) < 8
    _check_detections(result[RAW], result[RAW + "/agegender"])
    assert [m.data for _, _, m, _ in result[CHATTER]] == ["start"]


def test_a_frame_that_decompresses_to_gigabytes_is_skipped(tmp_path, astronaut, random_weights, capsys):
    """A 16000 x 16000 PNG CompressedImage (0.3 MB, 768 MB decoded): skipped from its header, copied, counted as
    malformed; --max-image-pixels lowers the limit for the camera frames too."""
    from test_ros_image import huge_png

    source, out = tmp_path / "in", tmp_path / "out"
    huge = T["sensor_msgs/msg/CompressedImage"](header=_header(T0 + 5, "camera2"), format="png",
                                                data=np.frombuffer(huge_png(), np.uint8))
    messages = standard_messages(astronaut)[:3] + [(COMPRESSED, "sensor_msgs/msg/CompressedImage", T0 + 30_000_000,
                                                    huge)]
    write_bag(source, messages, "mcap")
    assert run_bag([source, "--out", out], random_weights) == 0
    captured = capsys.readouterr()
    assert "image 16000x16000 (256,000,000 pixels) is larger than max_image_pixels 33,177,600" in captured.err
    assert f"{COMPRESSED}: 1 image(s), 1 face(s) -> {COMPRESSED}/agegender; 1 malformed image(s) skipped" in \
        captured.out
    result = read_bag(out)
    assert len(result[COMPRESSED]) == 2 and len(result[COMPRESSED + "/agegender"]) == 1
    assert run_bag([source, "--out", tmp_path / "small", "--max-image-pixels", "1000"], random_weights) == 0
    assert f"{RAW}: 0 image(s), 0 face(s)" in capsys.readouterr().out  # 512 x 512 is above 1000 pixels

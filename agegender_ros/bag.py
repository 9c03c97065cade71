"""`agegender bag IN --out OUT`: age and gender for every image of a recorded rosbag2, offline, without ROS.

    agegender bag recording/ --out recording_agegender/
    agegender bag recording.mcap --out out/ --topics /camera/image_raw/compressed --format sqlite3

IN is a rosbag2 folder (with metadata.yaml) or a single `.mcap` / `.db3` file. Every sensor_msgs/Image and
sensor_msgs/CompressedImage topic is processed (or only the topics named with --topics). OUT is a new rosbag2
folder holding every topic of IN unchanged plus, for each processed image topic `T`, a topic `T/agegender`
(`detections_topic()`) of agegender_ros/msg/AgeGenderArray: one message per readable image, with the image's
header (stamp and frame_id) and the image's receive time as its bag timestamp -- also when no face is found,
as the node does. Faces are tracked per topic with the node's default tracking parameters (`--no-tracking`:
track_id 0, raw estimates). OUT is written in IN's storage format unless --format says otherwise.

Read and written with the `rosbags` library (pure Python): no ROS installation is needed. The message types
come from the bag's own definitions, the ROS 2 default types and this package's msg/*.msg files (source tree,
an installed ROS package's share/agegender_ros/msg, or a pip install's share/agegender_ros/msg).

Damaged input: a malformed image message (bad CDR, size, encoding, corrupt JPEG) is copied unchanged, gets no
AgeGenderArray, and is counted and reported; processing goes on. A corrupt or truncated bag ends the run with a
message naming the file and the problem and exit status 1, after OUT has been closed with everything read
before the damage. A truncated MCAP file (a recorder that was killed: no summary, no footer) is read record
by record up to the damage with the `mcap` library. An image the estimator fails on is reported and the run
goes on, but ends with exit status 1.
"""
from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from agegender_ros.cli import CommandError, add_estimator_options, build_estimator

IMAGE_TYPES = {"sensor_msgs/msg/Image": False, "sensor_msgs/msg/CompressedImage": True}  # -> compressed?
AGEGENDER_ARRAY = "agegender_ros/msg/AgeGenderArray"
AGEGENDER = "agegender_ros/msg/AgeGender"
DETECTIONS_SUFFIX = "/agegender"
EXIT_DAMAGED = 1
STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
SHOWN_WARNINGS = 10  # malformed images reported one by one; the rest only counted


def detections_topic(image_topic: str) -> str:
    """The AgeGenderArray topic written for an image topic: `/camera/image_raw` -> `/camera/image_raw/agegender`."""
    return image_topic.rstrip("/") + DETECTIONS_SUFFIX


class BagDamaged(Exception):
    """The input bag is corrupt or truncated; str() names the file and the problem."""


# --------------------------------------------------------------------------------------------------------------
# Message types


def msg_dirs() -> list:
    """Where AgeGender.msg / AgeGenderArray.msg are looked for, in order."""
    dirs = [Path(__file__).resolve().parent.parent / "msg"]  # source tree, editable pip install
    try:  # an installed ROS package (colcon install, apt)
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("agegender_ros")) / "msg")
    except Exception:  # not installed, or no ament_index_python
        pass
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / "agegender_ros" / "msg")
    dirs.append(Path(sys.prefix) / "share" / "agegender_ros" / "msg")  # pip install (setup.py data_files)
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def agegender_types() -> dict:
    """rosbags types (name -> parse tree) of AgeGender and AgeGenderArray, from the package's .msg files."""
    from rosbags.typesys import get_types_from_msg

    dirs = msg_dirs()
    for directory in dirs:
        files = [directory / "AgeGender.msg", directory / "AgeGenderArray.msg"]
        if all(f.is_file() for f in files):
            types = {}
            for path, name in zip(files, (AGEGENDER, AGEGENDER_ARRAY)):
                types.update(get_types_from_msg(path.read_text(), name))
            return types
    raise CommandError("cannot find AgeGender.msg and AgeGenderArray.msg; looked in: "
                       + ", ".join(str(d) for d in dirs))


class TypeRegistry:
    """A rosbags typestore: the ROS 2 default types, overridden by the definitions found in the bag, plus ours."""

    def __init__(self):
        from rosbags.typesys import Stores, get_typestore

        self._defaults = dict(get_typestore(Stores.LATEST).fielddefs)
        self._bag: dict = {}
        self._ours = agegender_types()
        self.store = None
        self._rebuild()

    def _rebuild(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        types = dict(self._defaults)
        types.update(self._bag)
        types.update(self._ours)
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        self.store = store

    def add_definitions(self, definitions: list) -> list:
        """Register (msgtype, format, text) definitions from the bag ('msg' or 'idl'); returns the problems
        (types whose definition cannot be parsed; the default definition is used for those)."""
        from rosbags.typesys import get_types_from_idl, get_types_from_msg

        problems, added = [], {}
        for msgtype, fmt, text in definitions:
            if not text or msgtype in self._bag:
                continue
            try:
                if fmt == "msg":
                    added.update(get_types_from_msg(text, msgtype))
                elif fmt == "idl":
                    sep = "=" * 80 + "\n"
                    if text.startswith(sep + "IDL: "):  # several IDL files, each after a separator line
                        for part in text.split(sep)[1:]:
                            added.update(get_types_from_idl(part.split("\n", 1)[1]))
                    else:
                        added.update(get_types_from_idl(text))
            except Exception as error:  # a definition rosbags cannot parse
                problems.append(f"{msgtype}: unreadable message definition ({type(error).__name__}: {error})")
        added = {k: v for k, v in added.items() if k not in self._ours}
        if added:
            self._bag.update(added)
            self._rebuild()
        return problems


# --------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Conn:
    """One input connection (topic + type), from rosbags' reader or the MCAP salvage scan."""

    id: int
    topic: str
    msgtype: str
    msgdef_format: str = ""  # "msg", "idl" or "" (none in the bag)
    msgdef: str = ""
    digest: str = ""
    serialization_format: str = "cdr"
    qos: list = field(default_factory=list)  # rosbags Qos objects (offered QoS profiles)
    count: int = 0  # messages, when the bag's index says


def _conn_from_rosbags(c) -> Conn:
    fmt = getattr(getattr(c.msgdef, "format", None), "name", "") or ""
    fmt = {"MSG": "msg", "IDL": "idl"}.get(fmt, "")
    ext = c.ext
    return Conn(c.id, c.topic, c.msgtype, fmt, getattr(c.msgdef, "data", "") or "", c.digest or "",
                getattr(ext, "serialization_format", "cdr") or "cdr", list(getattr(ext, "offered_qos_profiles", [])
                                                                       or []), int(c.msgcount or 0))


def storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3' for a bag folder or file (by its files' suffixes)."""
    files = [path] if path.is_file() else sorted(path.iterdir())
    for f in files:
        if f.suffix == ".mcap":
            return "mcap"
        if f.suffix == ".db3":
            return "sqlite3"
    return "sqlite3" if path.suffix == ".db3" else "mcap"


def _mcap_files(path: Path) -> list:
    if path.is_file():
        return [path] if path.suffix == ".mcap" else []
    names = []
    meta = path / "metadata.yaml"
    if meta.is_file():
        try:
            import yaml

            info = yaml.safe_load(meta.read_text()) or {}
            names = [path / n for n in info["rosbag2_bagfile_information"]["relative_file_paths"]]
        except Exception:
            names = []
    names = [n for n in names if n.suffix == ".mcap" and n.is_file()]
    return names or sorted(path.glob("*.mcap"))


class RosbagsSource:
    """Messages of an intact bag through rosbags' Reader. Damage met while reading raises BagDamaged."""

    def __init__(self, path: Path):
        from rosbags.rosbag2 import Reader

        self.path = path
        self._reader = Reader(path)
        self._reader.open()  # ReaderError etc. for a damaged bag: the caller decides
        self.connections = [_conn_from_rosbags(c) for c in self._reader.connections]
        self._by_id = {c.id: conn for c, conn in zip(self._reader.connections, self.connections)}
        self.total = self._reader.message_count or None

    def messages(self) -> Iterator[tuple]:
        it = self._reader.messages()
        while True:
            try:
                connection, timestamp, data = next(it)
            except StopIteration:
                return
            except Exception as error:
                raise BagDamaged(_damage_text(self.path, error)) from error
            yield self._by_id[connection.id], timestamp, data

    def close(self) -> None:
        if self._reader.is_open:
            try:
                self._reader.close()
            except Exception:
                pass


def _damage_text(path: Path, error: BaseException) -> str:
    text = (str(error) or type(error).__name__).rstrip(".")
    if not isinstance(error, BagDamaged) and type(error).__name__ != "ReaderError":
        text = f"{type(error).__name__}: {text}"
    return f"{path}: {text}"


class _Truncated(BagDamaged):
    """The end of an MCAP file cuts a record off, or comes before the footer."""


class _WholeReads:
    """A file for mcap's StreamReader whose read(n) returns n bytes or raises _Truncated: StreamReader would take
    the short read at the end of a truncated file for a whole record."""

    def __init__(self, f):
        self._f = f
        self._size = f.seek(0, io.SEEK_END)
        f.seek(0)

    def read(self, n: int) -> bytes:
        if self._f.tell() + n > self._size:
            raise _Truncated(f"truncated: the data ends at byte {self._size}, inside a record or before the footer")
        return self._f.read(n)


def _cut_chunk_records(rest: bytes):
    """The records of `rest` when it is an uncompressed chunk that the end of the file cuts off: the whole ones,
    then _Truncated."""
    from mcap.data_stream import ReadDataStream
    from mcap.opcode import Opcode
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    stream = ReadDataStream(io.BytesIO(rest))  # mcap's own reads: the chunk's data comes back short
    if stream.read1() != Opcode.CHUNK:
        return []
    stream.read8()  # the record's length
    chunk = Chunk.read(stream)
    return [] if chunk.compression else StreamReader(_WholeReads(io.BytesIO(chunk.data)), skip_magic=True).records


class McapSalvage:
    """Reads damaged MCAP files record by record from their start with mcap's StreamReader, up to the damage (a
    truncated file from a recorder that was killed has no summary and no footer; rosbags refuses it). Messages
    in a corrupt or cut-off chunk are lost, except the whole ones at the start of a cut-off uncompressed chunk."""

    def __init__(self, files: list):
        self.files = files
        self.connections: list = []  # grows while reading
        self.total = None
        self.damage: str | None = None  # what stopped the reading

    def messages(self) -> Iterator[tuple]:
        for number, path in enumerate(self.files):
            try:
                with open(path, "rb") as f:
                    yield from self._file(f, number << 16)  # the channel ids of two files do not collide
            except Exception as error:  # OSError, BagDamaged, mcap's errors, a corrupt zstd or lz4 chunk
                self.damage = _damage_text(path, error)
                return

    def _file(self, f, id_offset: int) -> Iterator[tuple]:
        from mcap.stream_reader import StreamReader

        self._schemas: dict = {}
        self._channels: dict = {}
        self._id_offset = id_offset
        end = 0  # where the last whole top-level record ends
        try:
            for record in StreamReader(_WholeReads(f), validate_crcs=True).records:
                end = f.tell()
                yield from self._record(record)
        except _Truncated as error:  # the cut-off record: an uncompressed chunk still holds whole records
            f.seek(end)
            try:
                for record in _cut_chunk_records(f.read()):
                    yield from self._record(record)
            except Exception:  # a cut-off chunk header, or the cut-off record in the chunk
                pass
            raise error

    def _record(self, record) -> Iterator[tuple]:
        from mcap.records import Channel, Message, Schema

        if isinstance(record, Schema):
            self._schemas[record.id] = record
        elif isinstance(record, Channel) and record.id not in self._channels:
            self._channels[record.id] = self._connection(record, self._schemas.get(record.schema_id))
        elif isinstance(record, Message):
            if record.channel_id not in self._channels:
                raise BagDamaged(f"a message is on channel {record.channel_id}, which was never defined")
            yield self._channels[record.channel_id], record.log_time, record.data

    def _connection(self, channel, schema) -> Conn:
        from rosbags.rosbag2.metadata import parse_qos

        try:
            qos = list(parse_qos(channel.metadata.get("offered_qos_profiles", "")))
        except Exception:  # QoS profiles rosbags cannot parse: written without
            qos = []
        name, fmt, text = "", "", ""
        if schema is not None:
            name, text = schema.name, schema.data.decode("utf-8", "replace")
            fmt = {"ros2msg": "msg", "ros2idl": "idl"}.get(schema.encoding, "")
        conn = Conn(self._id_offset + channel.id, channel.topic, name, fmt, text, "", channel.message_encoding or "cdr",
                    qos)
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        pass


def open_source(path: Path, warn) -> Any:
    """A message source for IN: rosbags' Reader, or the MCAP salvage scan when rosbags refuses the file."""
    try:
        return RosbagsSource(path)
    except FileNotFoundError as error:
        raise CommandError(f"{path}: {error}") from error
    except Exception as error:
        reason = _damage_text(path, error)
        files = _mcap_files(path)
        if not files:
            raise BagDamaged(reason) from error
        try:
            import mcap  # noqa: F401
        except ImportError:
            raise BagDamaged(f"{reason} (pip install mcap to read a truncated MCAP file up to the damage)") from error
        warn(f"warning: {reason}: reading the MCAP data record by record up to the damage")
        return McapSalvage(files)


# --------------------------------------------------------------------------------------------------------------
# Processing


@dataclass
class Summary:
    messages: int = 0  # written to OUT, copied ones and AgeGenderArrays
    images: dict = field(default_factory=dict)  # image topic -> images processed
    faces: dict = field(default_factory=dict)  # image topic -> faces found
    malformed: dict = field(default_factory=dict)  # image topic -> malformed images skipped
    failed: dict = field(default_factory=dict)  # image topic -> images the estimator failed on
    skipped_topics: list = field(default_factory=list)  # not copied (no definition / replaced)
    damage: str | None = None


def _new_writer(out: Path, storage: str):
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        writer = Writer(out, version=getattr(Writer, "VERSION_LATEST", 9), storage_plugin=plugin)
    except TypeError:  # an older rosbags without `version`
        writer = Writer(out, storage_plugin=plugin)
    writer.open()
    return writer


class BagProcessor:
    def __init__(self, estimator, topics: list | None = None, tracking: bool = True, warn=None,
                 max_pixels: int | None = None):
        from agegender_ros.ros_image import MAX_PIXELS

        self.estimator = estimator
        self.topics = list(topics) if topics else None
        self.tracking = tracking
        self.max_pixels = max_pixels or MAX_PIXELS  # larger frames are refused from their declared size
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self._images: list = []  # per detections topic: its output connection and tracker

    def run(self, source, out: Path, storage: str, progress: bool = True) -> Summary:
        from agegender_ros.launch_args import PARAMETERS_BY_NAME
        from agegender_ros.tracking import FaceTracker, TrackIds

        registry = TypeRegistry()
        for problem in registry.add_definitions([(c.msgtype, c.msgdef_format, c.msgdef)
                                                 for c in source.connections]):
            self.warn(f"warning: {problem}")
        if self.topics and not isinstance(source, McapSalvage):
            present = {c.topic: c.msgtype for c in source.connections}
            missing = [t for t in self.topics if t not in present]
            wrong = [f"{t} ({present[t]})" for t in self.topics if t in present and present[t] not in IMAGE_TYPES]
            if missing or wrong:
                images = sorted(t for t, m in present.items() if m in IMAGE_TYPES)
                raise CommandError("--topics: " + "; ".join(
                    ([f"not in the bag: {', '.join(missing)}"] if missing else [])
                    + ([f"not an Image/CompressedImage topic: {', '.join(wrong)}"] if wrong else []))
                    + f" (image topics in the bag: {', '.join(images) or 'none'})")
        if not isinstance(source, McapSalvage) and not any(self._selected(c) for c in source.connections):
            raise CommandError("no sensor_msgs/Image or sensor_msgs/CompressedImage topic in the bag (topics: "
                               + ", ".join(sorted({c.topic for c in source.connections})) + ")")
        params = {name: PARAMETERS_BY_NAME[name].default for name in
                  ("track_iou_threshold", "smoothing", "track_max_missed")}
        track_ids = TrackIds()
        summary = Summary()
        writer = _new_writer(out, storage)
        outputs: dict = {}  # input connection id -> (output connection, image state or None)
        out_topics: set = set()
        bar = _progress(source.total, progress)
        try:
            try:
                for conn, timestamp, data in source.messages():
                    bar.update(1)
                    if conn.id not in outputs:
                        outputs[conn.id] = self._connect(conn, writer, registry, summary, out_topics, source,
                                                         FaceTracker, params, track_ids)
                    target = outputs[conn.id]
                    if target is None:
                        continue
                    out_conn, image = target
                    writer.write(out_conn, timestamp, data)
                    summary.messages += 1
                    if image is not None:
                        result = self._detect(conn, data, image, registry, summary)
                        if result is not None:
                            writer.write(image["out"], timestamp, result)
                            summary.messages += 1
            except BagDamaged as error:
                summary.damage = str(error)
            summary.damage = summary.damage or getattr(source, "damage", None)
        finally:
            bar.close()
            source.close()
            writer.close()
        if self.topics:
            missing = [t for t in self.topics if t not in summary.images]
            if missing and isinstance(source, McapSalvage):
                self.warn(f"warning: --topics: no readable message on {', '.join(missing)}")
        return summary

    def _selected(self, conn: Conn) -> bool:
        if conn.msgtype not in IMAGE_TYPES:
            return False
        return self.topics is None or conn.topic in self.topics

    def _connect(self, conn, writer, registry, summary, out_topics, source, tracker_class, params, track_ids):
        """The output connection for an input connection (and the image state when it is processed)."""
        detections = {detections_topic(c.topic) for c in source.connections if self._selected(c)}
        if self._selected(conn):
            detections.add(detections_topic(conn.topic))
        if conn.topic in detections and conn.msgtype == AGEGENDER_ARRAY:
            if conn.topic not in summary.skipped_topics:
                summary.skipped_topics.append(conn.topic)
                self.warn(f"note: {conn.topic} in the input is replaced by the new results")
            return None
        if isinstance(source, McapSalvage) and conn.msgdef:
            for problem in registry.add_definitions([(conn.msgtype, conn.msgdef_format, conn.msgdef)]):
                self.warn(f"warning: {problem}")
        out_conn = _add_connection(writer, conn.topic, conn.msgtype, registry, conn)
        if out_conn is None:
            summary.skipped_topics.append(conn.topic)
            self.warn(f"warning: {conn.topic} ({conn.msgtype}): no message definition; not copied")
            return None
        if not self._selected(conn):
            return out_conn, None
        topic = detections_topic(conn.topic)
        if topic in out_topics:  # two connections (e.g. QoS changes) on one image topic share the output
            image = next(s for s in self._images if s["topic"] == topic)
        else:
            out_topics.add(topic)
            tracker = tracker_class(params["track_iou_threshold"], params["smoothing"], params["track_max_missed"],
                                    track_ids) if self.tracking else None
            image = {"topic": topic, "image_topic": conn.topic, "tracker": tracker,
                     "out": _add_connection(writer, topic, AGEGENDER_ARRAY, registry, None)}
            self._images.append(image)
            summary.images.setdefault(conn.topic, 0)
            summary.faces.setdefault(conn.topic, 0)
        return out_conn, dict(image, compressed=IMAGE_TYPES[conn.msgtype], msgtype=conn.msgtype)

    def _detect(self, conn, data, image, registry, summary):
        """Serialised AgeGenderArray for one image message, or None when the image is malformed."""
        from agegender_ros.ros_image import decode_compressed, decode_raw
        from agegender_ros.tracking import untracked

        store = registry.store
        try:
            msg = store.deserialize_cdr(data, image["msgtype"])
            if image["compressed"]:
                frame = decode_compressed(msg.format, msg.data, max_pixels=self.max_pixels)
            else:
                frame = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                                   max_pixels=self.max_pixels)
        except Exception as error:  # ImageDecodeError, a CDR error, anything a malformed message provokes
            count = summary.malformed.get(conn.topic, 0) + 1
            summary.malformed[conn.topic] = count
            if sum(summary.malformed.values()) <= SHOWN_WARNINGS:
                kind = "" if type(error).__name__ in ("ImageDecodeError", "ImageTooLarge") else \
                    f"{type(error).__name__}: "
                self.warn(f"warning: {conn.topic}: skipping a malformed image: {kind}{error}")
            return None
        try:
            faces = self.estimator(frame)
            tracked = image["tracker"].update(faces) if image["tracker"] is not None else untracked(faces)
        except Exception as error:  # the estimator's fault, not the bag's: reported, the run goes on
            summary.failed[conn.topic] = summary.failed.get(conn.topic, 0) + 1
            if sum(summary.failed.values()) <= SHOWN_WARNINGS:
                self.warn(f"warning: {conn.topic}: processing an image failed: {type(error).__name__}: {error}")
            return None
        summary.images[conn.topic] += 1
        summary.faces[conn.topic] += len(tracked)
        return store.serialize_cdr(agegender_array(store, msg.header, tracked, frame.shape[1], frame.shape[0]),
                                   AGEGENDER_ARRAY)


def agegender_array(store, header, faces, width: int, height: int):
    """A rosbags AgeGenderArray (types from `store`) for tracked faces, as the node fills it."""
    from agegender_ros.message_fields import agegender_fields

    types = store.types
    roi_type, item_type = types["sensor_msgs/msg/RegionOfInterest"], types[AGEGENDER]
    items = []
    for face in faces:
        fields = agegender_fields(face, width, height)
        x, y, w, h = fields.pop("roi")
        items.append(item_type(roi=roi_type(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False), **fields))
    return types[AGEGENDER_ARRAY](header=header, faces=items)


def _add_connection(writer, topic: str, msgtype: str, registry: TypeRegistry, conn: Conn | None):
    kwargs: dict = {}
    if conn is not None:
        kwargs = {"serialization_format": conn.serialization_format or "cdr",
                  "offered_qos_profiles": conn.qos}
    try:
        return writer.add_connection(topic, msgtype, typestore=registry.store, **kwargs)
    except Exception:
        if conn is not None and conn.msgdef and conn.digest:  # a type rosbags cannot regenerate: as recorded
            return writer.add_connection(topic, msgtype, msgdef=conn.msgdef, rihs01=conn.digest, **kwargs)
        if conn is None:
            raise
        return None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="msg", desc="agegender bag", dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# Command


def add_commands(sub) -> None:
    p = sub.add_parser("bag", help="age and gender for every image of a rosbag2 (MCAP or sqlite3), offline",
                       description=__doc__.split("\n\n")[0] + " Writes OUT with IN's topics plus an "
                       "agegender_ros/msg/AgeGenderArray topic IMAGE_TOPIC" + DETECTIONS_SUFFIX + " per image topic.")
    p.add_argument("input", metavar="IN", help="rosbag2 folder (with metadata.yaml), or a .mcap or .db3 file")
    p.add_argument("--out", required=True, metavar="OUT", help="the rosbag2 folder to write (must not exist)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC",
                   help="image topics to process (default: every Image and CompressedImage topic)")
    p.add_argument("--format", choices=sorted(STORAGE_SUFFIX), help="storage of OUT (default: as IN)")
    p.add_argument("--no-tracking", action="store_true",
                   help="no face tracking: track_id 0 and per-frame estimates (default: tracked and smoothed, "
                        "with the node's default tracking parameters)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="skip (as malformed, without decoding) frames larger than N pixels, read from the message "
                        "or the JPEG/PNG header (default 33,177,600 = 7680x4320, as the node's max_image_pixels)")
    add_estimator_options(p)
    p.set_defaults(func=cmd_bag)


def cmd_bag(args) -> int:
    try:
        import rosbags  # noqa: F401
    except ImportError as error:
        raise CommandError(f"`agegender bag` needs the rosbags library ({error}): pip install rosbags") from error
    source_path, out = Path(args.input), Path(args.out)
    if not source_path.exists():
        raise CommandError(f"{source_path}: no such file or folder")
    if out.exists():
        raise CommandError(f"{out} exists already; give a new folder to --out")
    storage = args.format or storage_of(source_path)
    bar_enabled = not args.no_progress

    def warn(text: str) -> None:
        if bar_enabled:
            try:
                from tqdm import tqdm

                tqdm.write(text, file=sys.stderr)
                return
            except ImportError:
                pass
        print(text, file=sys.stderr, flush=True)

    try:
        source = open_source(source_path, warn)
    except BagDamaged as error:
        print(f"error: corrupt or unreadable bag: {error}", file=sys.stderr)
        return EXIT_DAMAGED
    try:
        estimator = build_estimator(args)
        processor = BagProcessor(estimator, args.topics, tracking=not args.no_tracking, warn=warn,
                                 max_pixels=args.max_image_pixels)
        summary = processor.run(source, out, storage, progress=bar_enabled)
    finally:
        source.close()
    for topic in sorted(summary.images):
        malformed, failed = summary.malformed.get(topic, 0), summary.failed.get(topic, 0)
        print(f"{topic}: {summary.images[topic]} image(s), {summary.faces[topic]} face(s) -> "
              f"{detections_topic(topic)}" + (f"; {malformed} malformed image(s) skipped" if malformed else "")
              + (f"; processing failed on {failed} image(s)" if failed else ""))
    print(f"wrote {summary.messages} message(s) to {out} ({storage})")
    if summary.failed:
        print(f"error: processing failed on {sum(summary.failed.values())} image(s) (see the warnings above)",
              file=sys.stderr)
    if summary.damage:
        print(f"error: corrupt or truncated bag: {summary.damage}; {out} holds the {summary.messages} message(s) "
              "read before the damage", file=sys.stderr)
        return EXIT_DAMAGED
    return 1 if summary.failed else 0

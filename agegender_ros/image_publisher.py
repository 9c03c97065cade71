"""image_publisher: a camera for the by-hand path -- photos, a video file or a camera device as sensor_msgs/Image.

    ros2 run agegender_ros image_publisher [PHOTO_DIR_OR_VIDEO_OR_DEVICE] [--rate HZ] [--topic T] [--loop]
    ros2 run agegender_ros image_publisher                        # the bundled sample photos, 1 Hz, once
    ros2 run agegender_ros image_publisher ~/photos --rate 2 --loop
    ros2 run agegender_ros image_publisher clip.mp4 --rate 15
    ros2 run agegender_ros image_publisher /dev/video0            # or 0: a camera through OpenCV
    python3 -m agegender_ros.image_publisher --help               # works without ROS

Publishes each frame as a bgr8 sensor_msgs/Image (reliable, keep last 1: every subscriber QoS matches, the node's
best-effort one included) with a header stamped when it is sent and `--frame-id`. Photos are read as `agegender
predict` reads them (a folder recursively, in name order; a photo that cannot be read is named and skipped), videos
and cameras through OpenCV. Like nano.launch.py's processes it uses the package's Fast DDS shared-memory profile
(`--dds-profile auto`: when the RMW is Fast DDS and no profile of your own is set), so that full-size frames reach
the node without loss. Ends by itself after the last photo or video frame (unless --loop) or --count frames;
Ctrl-C stops it at once (a clean-up that hangs in DDS prints where and ends after CLEANUP_TIMEOUT_S).

ROS-facing (rclpy, imported once the arguments are read); the frame reading is ROS-free (`frames`).
Python 3.8 compatible.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

SAMPLES = Path(__file__).resolve().parent / "samples"
DEFAULT_TOPIC = "/camera/image_raw"
# After Ctrl-C: the longest the clean-up may take (`ros2 launch` sends SIGTERM after 5 s, SIGKILL after 10 s).
CLEANUP_TIMEOUT_S = 4.0


class SourceError(RuntimeError):
    """A source that gives no frames: said in one line, exit status 2."""


class Frame(NamedTuple):
    name: str  # the photo's file name, or `<video>#frame=N`
    image: np.ndarray  # H x W x 3 uint8, BGR


def parse_source(source: str):
    """('device', int index or /dev path), ('video', Path), ('photos', Path) for a file or a folder."""
    if source.isdigit():
        return "device", int(source)
    path = Path(source).expanduser()
    if source.startswith("/dev/"):
        return "device", str(path)
    if not path.exists():
        raise SourceError(f"{source}: no such file, folder or device")
    from agegender_ros.cli import VIDEO_SUFFIXES

    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video", path
    return "photos", path


def frames(source: str, loop: bool = False, max_pixels: int | None = None,
           warn=lambda text: print(text, file=sys.stderr, flush=True)) -> Iterator[Frame]:
    """The frames of a photo folder or photo, a video file or a camera (endless), with --loop over and over.
    Unreadable photos are said through `warn` and skipped; a source with no readable frame raises SourceError."""
    from agegender_ros.cli import CommandError, iter_inputs, iter_video, read_image

    kind, where = parse_source(source)
    while True:
        count = 0
        try:
            if kind == "photos":
                inputs = [path for what, path in iter_inputs([str(where)]) if what == "image"]
                for path in inputs:
                    try:
                        image = read_image(path, max_pixels)
                    except CommandError as error:
                        warn(f"image_publisher: skipped: {error}")
                        continue
                    count += 1
                    yield Frame(path.name, image)
            else:
                for index, image in iter_video(where if kind == "device" else str(where), 1, None, max_pixels):
                    count += 1
                    yield Frame(f"{Path(str(where)).name}#frame={index}", image)
        except CommandError as error:  # a video or camera OpenCV cannot open or decode
            raise SourceError(str(error)) from error
        if count == 0:
            raise SourceError(f"{source}: no readable photo or video frame")
        if not loop or kind == "device":
            return


def share_directory() -> str:
    """The package's share folder (config/fastdds_large_shm.xml): the installed one, else the source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory("agegender_ros")
    except (ImportError, LookupError, OSError):  # no ament_index, not installed, no AMENT_PREFIX_PATH
        return str(Path(__file__).resolve().parents[1])


def dds_environment(choice: str, environ) -> dict:
    """The environment variables of the DDS profile `choice` (auto / none / a path), as nano.launch.py gives its
    processes (agegender_ros.launch_args.transport_environment)."""
    from agegender_ros.launch_args import transport_environment

    return transport_environment(choice, environ, share_directory())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ros2 run agegender_ros image_publisher", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Publish photos, a video file or a camera as bgr8 sensor_msgs/Image, with headers (stamp, "
                    "frame_id) and the package's shared-memory DDS profile: a camera for trying the node by hand.",
        epilog="examples:\n" + "\n".join("  " + line.strip() for line in __doc__.split("\n\n")[1].splitlines()[1:5]))
    parser.add_argument("source", nargs="?", default=str(SAMPLES), metavar="PHOTO_DIR_OR_VIDEO_OR_DEVICE",
                        help="a folder of photos (searched recursively), a photo, a video file, or a camera: its "
                             "index (0) or device (/dev/video0) (default: the package's sample photos)")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="frames per second (default: 1 for photos, the video's own rate for a video, as the "
                             "camera sends for a camera; a camera's frames in between are dropped)")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"the Image topic (default: {DEFAULT_TOPIC})")
    parser.add_argument("--frame-id", default="camera", help="header.frame_id (default: camera)")
    parser.add_argument("--loop", action="store_true", help="start again after the last photo or video frame")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--dds-profile", default="auto", metavar="auto|none|PATH",
                        help="Fast DDS profile, as nano.launch.py's dds_profile (default auto: the package's "
                             "shared-memory profile when the RMW is Fast DDS and none of your own is set)")
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="skip photos larger than N pixels (default 100,000,000), read from their header")
    parser.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="wait up to S seconds for a subscriber before the first frame (default 10)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per published photo")
    return parser


def _video_rate(kind: str, where) -> float | None:
    """A video file's own frame rate, or None."""
    if kind != "video":
        return None
    import cv2

    capture = cv2.VideoCapture(str(where))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return fps if fps and 0 < fps < 1000 else None


def own_arguments(argv: list) -> list:
    """The arguments after the program name that are not ROS arguments (`--ros-args ... [--]`, as `ros2 run` and
    launch_ros pass them; rclpy reads those)."""
    own, in_ros = [], False
    for arg in argv[1:]:
        if arg == "--ros-args":
            in_ros = True
        elif in_ros and arg == "--":
            in_ros = False
        elif not in_ros:
            own.append(arg)
    return own


def _wait_for_subscriber(node, publisher, topic: str, timeout: float, ok) -> bool:
    """True once something subscribes to `topic` (the first frame would be lost before discovery matched it);
    False after `timeout` s or once `ok()` is False (Ctrl-C)."""
    count = getattr(publisher, "get_subscription_count", None) or (lambda: node.count_subscribers(topic))
    deadline = time.monotonic() + timeout
    while ok() and count() == 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return ok()


def _deliver(publisher, timeout_s: float = 5.0) -> None:
    """Before the publisher goes away: let the last frame reach its subscribers (a publisher destroyed right after
    publishing loses what was not delivered yet; a large frame takes a moment). Reliable subscribers acknowledge
    (wait_for_all_acked: Humble and later); best-effort ones (the node) get a short grace period."""
    from rclpy.duration import Duration

    waiter = getattr(publisher, "wait_for_all_acked", None)
    if waiter is not None:
        try:
            waiter(Duration(seconds=timeout_s))
        except Exception:  # not supported by this RMW
            pass
    time.sleep(0.5)


def main(argv: list | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(own_arguments(argv))
    if args.rate is not None and args.rate <= 0:
        print("image_publisher: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        kind, where = parse_source(args.source)
    except SourceError as error:
        print(f"image_publisher: {error}", file=sys.stderr)
        return 2
    rate = args.rate or (1.0 if kind == "photos" else _video_rate(kind, where))

    # The DDS profile before the first DDS participant of this process exists (rclpy.init).
    from agegender_ros.launch_args import ParameterError

    try:
        profile = dds_environment(args.dds_profile, os.environ)
    except ParameterError as error:
        if args.dds_profile.strip() != "auto":
            print(f"image_publisher: {error}", file=sys.stderr)
            return 2
        # A pip install has no config/ folder (colcon installs it into the share folder): DDS's defaults.
        print(f"image_publisher: warning: the package's DDS profile is not installed here ({error}); large frames "
              "may be lost", file=sys.stderr)
        profile = {}
    os.environ.update(profile)
    profile_note = next(iter(profile.values()), None) or next(
        (os.environ[name] for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
         if os.environ.get(name)), None)

    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from agegender_ros.node import _try_shutdown, image_message, sigint_ignored
    from agegender_ros.ros_image import encode_raw

    rclpy.init(args=argv)
    node = rclpy.create_node("image_publisher")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
    publisher = node.create_publisher(Image, args.topic, qos)
    topic = publisher.topic_name if hasattr(publisher, "topic_name") else args.topic
    print(f"image_publisher: {args.source} ({kind}) -> {topic} as bgr8 sensor_msgs/Image, frame_id "
          f"{args.frame_id!r}, " + (f"{rate:g} Hz" if rate else "at the camera's rate")
          + (", looping" if args.loop and kind != "device" else "")
          + (f", {args.count} frame(s)" if args.count else "")
          + (f"; Fast DDS profile {profile_note}" if profile_note else "; no DDS profile") + "; Ctrl-C stops",
          flush=True)
    period = 1.0 / rate if rate else 0.0
    published, last_stamp_ns, status = 0, 0, 0
    interrupted = False  # Ctrl-C / SIGTERM / an external rclpy shutdown, as opposed to running out of frames
    try:
        if not _wait_for_subscriber(node, publisher, topic, args.wait, rclpy.ok) and rclpy.ok():
            print(f"image_publisher: nothing subscribes to {topic} after {args.wait:g} s; publishing anyway",
                  flush=True)
        due = started = time.monotonic()
        status_at = started + 10.0
        for frame in frames(args.source, args.loop, args.max_image_pixels):
            now = time.monotonic()
            if kind == "device" and now < due:
                continue  # a camera sends at its own rate: drop the frames between two due times
            while now < due and rclpy.ok():  # in short steps: Ctrl-C (rclpy's handler) ends the wait at once
                time.sleep(min(0.1, due - now))
                now = time.monotonic()
            if not rclpy.ok():
                interrupted = True
                break
            stamp_ns = max(node.get_clock().now().nanoseconds, last_stamp_ns + 1)  # strictly increasing
            last_stamp_ns = stamp_ns
            header = Header(frame_id=args.frame_id)
            header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            publisher.publish(image_message(encode_raw(frame.image), header))
            published += 1
            due = max(due + period, time.monotonic() - period) if period else time.monotonic()
            if not args.quiet and kind == "photos":
                height, width = frame.image.shape[:2]
                print(f"image_publisher: {frame.name} ({width}x{height}) stamp {header.stamp.sec}."
                      f"{header.stamp.nanosec:09d}", flush=True)
            elif not args.quiet and time.monotonic() >= status_at:
                print(f"image_publisher: {published} frames published ({published / (time.monotonic() - started):.1f}"
                      " Hz)", flush=True)
                status_at += 10.0
            if args.count and published >= args.count:
                break
    except SourceError as error:
        print(f"image_publisher: {error}", file=sys.stderr)
        status = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        interrupted = True
    except Exception:
        if rclpy.ok():
            raise
        interrupted = True  # rclpy was shut down (Ctrl-C) between a check and a call: not an error
    finally:
        with sigint_ignored():
            if interrupted:  # a clean-up that hangs (in DDS) says where, and ends, before `ros2 launch` escalates
                faulthandler.dump_traceback_later(CLEANUP_TIMEOUT_S, exit=True)
            # Only a run that ended by itself waits for its last frame to arrive. After Ctrl-C the wait could take
            # its whole timeout (a subscriber that stopped acknowledging), longer than `ros2 launch` gives a
            # process before it escalates to SIGTERM and SIGKILL; and rclpy.ok() can still be True right after the
            # KeyboardInterrupt (rclpy's own shutdown of the context runs in another thread), so it cannot decide.
            if published and not interrupted and rclpy.ok():
                _deliver(publisher)
            node.destroy_node()
            _try_shutdown()
            faulthandler.cancel_dump_traceback_later()
    if status == 0:
        print(f"image_publisher: published {published} frame(s) on {topic}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

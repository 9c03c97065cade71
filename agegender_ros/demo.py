"""`make demo`: the ROS 2 node on the bundled sample photos, end to end, run the way a ROS user runs it.

    scripts/netns_run.sh python -m agegender_ros.demo --out demo_out      (what `make demo` runs)

Inside the private network namespace that scripts/netns_run.sh provides (its own DDS domain):
  1. starts the node with the real `ros2 launch agegender_ros nano.launch.py publish_debug_image:=true`;
  2. starts the real `ros2 topic echo /agegender/detections`;
  3. publishes each photo of agegender_ros/samples/ once as sensor_msgs/Image on /camera/image_raw (a small
     rclpy publisher in this process, standing in for a camera);
  4. prints, per photo, what `ros2 topic echo` printed for it, and writes the annotated frames from
     /agegender/debug_image to --out; then stops everything and exits (each child has a hard time limit).
Where the `ros2` command (ros2launch / ros2topic) is missing, or with --no-launch, the node runs inside this
process instead and the messages are printed by the demo's own copy of `ros2 topic echo`'s format.

This module is ROS-free glue: what touches rclpy lives in agegender_ros.ros_session and agegender_ros.node
(imported lazily).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"
LAUNCH_COMMAND = ["ros2", "launch", "agegender_ros", "nano.launch.py", "publish_debug_image:=true"]
ECHO_COMMAND = ["ros2", "topic", "echo", "/agegender/detections"]
# Run as `ros2 topic echo --no-daemon /agegender/detections agegender_ros/msg/AgeGenderArray` (same output): a
# `ros2 daemon` started by the echo would outlive the demo in its private network namespace, and without the
# daemon's graph the echo needs the type, which it could not look up before discovery has run.
ECHO_OPTIONS = ["--no-daemon"]
ECHO_TYPE = "agegender_ros/msg/AgeGenderArray"

HEADER_LAUNCH = """\
agegender_ros demo -- the ROS 2 node on the bundled sample photos, through the real ROS 2 tools
  * starts the node:       $ {launch}
  * subscribes:            $ {echo}   (here with --no-daemon and the type: no ros2 daemon left behind)
  * publishes each photo in {samples}/ once as sensor_msgs/Image (bgr8) on /camera/image_raw
  * prints, per photo, what `ros2 topic echo` printed: header.stamp = the photo's stamp; per face: roi (box in
      pixels), score (detector), age (years), age_std (ensemble spread), gender (1 = female, 2 = male),
      gender_confidence, p_male, track_id
  * writes the annotated frames (/agegender/debug_image) to {out}/
All ROS 2 traffic stays inside this private network namespace (DDS domain {domain}).
"""

HEADER_IN_PROCESS = """\
agegender_ros demo -- the ROS 2 node on the bundled sample photos
  * {why}: the node runs inside this process
  * starts agegender_node (detector {detector}, backend {backend}) with weights {weights}
  * publishes each photo in {samples}/ once as sensor_msgs/Image (bgr8) on /camera/image_raw
  * prints each agegender_ros/AgeGenderArray from /agegender/detections as `ros2 topic echo` does:
      header.stamp = the photo's stamp; per face: roi (box in pixels), score (detector), age (years),
      age_std (ensemble spread), gender (1 = female, 2 = male), gender_confidence, p_male, track_id
  * writes the annotated frames (/agegender/debug_image) to {out}/
All ROS 2 traffic stays inside this private network namespace (DDS domain {domain}).
"""


def untrained_weights() -> str:
    """Random-init weights (fixed seed), for a pipeline demo before the real weights are trained. Kept in the
    cache folder so that later runs reuse them (and their exported ONNX file)."""
    import torch

    from agegender_ros.backends import cache_dir
    from agegender_ros.model import create_model
    from agegender_ros.weights import WeightsError, load_model, save_weights

    path = cache_dir() / "demo" / "untrained_seed0.pt"
    try:
        load_model(path)
        return str(path)
    except WeightsError:
        pass
    torch.manual_seed(0)
    save_weights(create_model("paper"), path, {"architecture": "paper", "model_args": {},
                                               "training_data": "none: random initialisation (demo fallback)"})
    return str(path)


def ros2_tools_missing() -> str | None:
    """Why the real `ros2 launch` / `ros2 topic echo` cannot be used here, or None when they can."""
    if shutil.which("ros2") is None:
        return "the `ros2` command is not installed (no ros2cli)"
    for module, package in (("ros2launch", "ros2launch"), ("ros2topic", "ros2topic"), ("launch_ros", "launch_ros")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed"
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return "ament_index_python is not installed"
    try:
        share = get_package_share_directory("agegender_ros")
    except PackageNotFoundError:
        return "agegender_ros is not built and sourced (colcon build; source install/setup.bash)"
    if not os.path.isfile(os.path.join(share, "launch", "nano.launch.py")):
        return f"{share}/launch/nano.launch.py is not installed"
    return None


class EchoReader:
    """Reads `ros2 topic echo`'s output in a thread and keeps each printed message (the text up to its '---'
    line) by its header stamp."""

    _STAMP = re.compile(r"^header:\n  stamp:\n    sec: (-?\d+)\n    nanosec: (\d+)\n", re.M)

    def __init__(self, stream):
        self._stream = stream
        self._cond = threading.Condition()
        self.blocks: dict = {}  # (sec, nanosec) -> the printed text
        self.other: list = []  # lines that are not part of a message (warnings)
        self._thread = threading.Thread(target=self._read, name="echo_reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        lines: list = []
        for line in self._stream:
            if line.rstrip("\n") == "---":
                text = "".join(lines)
                lines = []
                match = self._STAMP.search(text)
                with self._cond:
                    if match:
                        self.blocks[(int(match.group(1)), int(match.group(2)))] = text[match.start():]
                    else:
                        self.other.append(text)
                    self._cond.notify_all()
            else:
                lines.append(line)
        with self._cond:
            if lines:
                self.other.append("".join(lines))
            self._cond.notify_all()

    def wait(self, stamp: tuple, timeout: float) -> str | None:
        with self._cond:
            return self.blocks[stamp] if self._cond.wait_for(lambda: stamp in self.blocks, timeout) else None


def _start(command: list, limit_s: float, **kwargs) -> subprocess.Popen:
    """A child under a hard time limit (`timeout -s KILL`): it cannot outlive the demo by much, even when the
    demo itself is killed. SIGINT sent to the `timeout` process reaches the command."""
    return subprocess.Popen(["timeout", "-s", "KILL", str(int(limit_s))] + command, start_new_session=True,
                            **kwargs)


def _stop(proc: subprocess.Popen | None, grace_s: float = 20.0) -> int | None:
    """Ctrl-C for the command (as in a terminal), then SIGKILL for its whole process group after `grace_s`."""
    if proc is None:
        return None
    if proc.poll() is None:
        # To the command itself: `timeout` would pass a signal on to the command *and* its whole group, and
        # `ros2 launch` takes a second SIGINT as "interrupted again".
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []
        try:
            if children:
                os.kill(int(children[0]), signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
            return proc.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


def _indented(text: str, prefix: str = "  | ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _answered_photos(probe, photos: list, remaining):
    """Publish each photo and wait for the node's answer; yields (path, frame, stamp, AgeGenderArray). An unreadable
    photo is said on stderr and skipped; a node that does not answer is said on stderr and raises TimeoutError."""
    from agegender_ros.faces import ImageReadError, read_image

    for path in photos:
        try:
            frame = read_image(path)
        except ImageReadError as error:
            print(f"# {path.name}: skipped: {error.reason}", file=sys.stderr)
            continue
        try:
            stamp, msg = probe.request(frame, "bgr8", frame_id=path.stem, timeout=max(5.0, remaining()))
        except TimeoutError as error:
            print(f"error: {path.name}: {error}", file=sys.stderr)
            raise
        yield path, frame, stamp, msg


_CUT = re.compile(r"(\d+) of (\d+) faces left out: max_faces is (\d+)")


def cut_note(log_text: str) -> str | None:
    """The demo's line for the node's "faces left out" log line (max_faces cut faces), or None."""
    match = _CUT.search(log_text)
    if match is None:
        return None
    cut, found, max_faces = match.groups()
    return (f"# max_faces ({max_faces}, config/nano.yaml) left out {cut} of the {found} faces found; "
            f"`ros2 launch agegender_ros nano.launch.py max_faces:={max(32, int(found))}` reports them all "
            "(and a larger detector_input_size, e.g. 640, finds smaller faces too)")


def _save_annotated(probe, stamp, out_dir: Path, path: Path) -> list:
    """[the written file] once the node's annotated frame for this stamp arrives, else []."""
    import cv2

    annotated = probe.wait_debug_image(stamp, 10.0)
    if annotated is None:
        return []
    target = out_dir / f"{path.stem}_annotated.jpg"
    cv2.imwrite(str(target), annotated)
    return [target]


def run_with_launch(args, photos: list, weights: str, note: str, out_dir: Path, started: float, domain: int) -> int:
    from agegender_ros import ros_session as ros

    launch_command = list(LAUNCH_COMMAND)
    if weights:
        launch_command.append(f"weights:={weights}")
    if args.backend != "auto":
        launch_command.append(f"backend:={args.backend}")
    print(HEADER_LAUNCH.format(launch=" ".join(launch_command), echo=" ".join(ECHO_COMMAND),
                               samples=Path(args.samples), out=out_dir, domain=domain) + note, flush=True)
    remaining = lambda: args.timeout - (time.monotonic() - started)  # noqa: E731
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # `ros2 topic echo` keeps DDS's defaults, as a user's shell would
    # This process stands in for a camera driver started by the launch file: it gets the same DDS set-up as the
    # launch's processes (without it, the 5.5 MB group photo crosses loopback as ~90 UDP fragments and is easily
    # lost on a busy machine). Set before the first DDS participant of this process exists.
    from ament_index_python.packages import get_package_share_directory

    from agegender_ros.launch_args import ParameterError, transport_environment

    try:
        os.environ.update(transport_environment("auto", os.environ, get_package_share_directory("agegender_ros")))
    except ParameterError as error:
        print(f"warning: {error}", file=sys.stderr)
    launch_log = tempfile.NamedTemporaryFile("w+", prefix="agegender-demo-launch-", suffix=".log", delete=False)
    launch = echo = None
    written: list = []
    printed = 0
    try:
        launch = _start(launch_command, args.timeout + 30, stdout=launch_log, stderr=subprocess.STDOUT, env=env)
        with ros.RosSession(domain_id=domain) as session:
            probe = session.probe(debug_image_topic="/agegender/debug_image", name="agegender_demo_camera")
            if not probe.wait_ready(max(5.0, remaining()), debug_image=True):
                print("error: the node started by `ros2 launch` did not come up; what it printed:\n"
                      + _indented(Path(launch_log.name).read_text()), file=sys.stderr)
                return 1
            print(f"$ {' '.join(launch_command)}\n" + _indented(Path(launch_log.name).read_text()) + "\n",
                  flush=True)
            echo_command = ECHO_COMMAND[:3] + ECHO_OPTIONS + ECHO_COMMAND[3:] + [ECHO_TYPE]
            echo = _start(echo_command, args.timeout + 30, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env, text=True, bufsize=1)
            reader = EchoReader(echo.stdout)
            # The echo has subscribed once the node's detections have two subscribers: the echo and our probe.
            deadline = time.monotonic() + max(5.0, remaining())
            while probe.count_subscribers("/agegender/detections") < 2 and time.monotonic() < deadline:
                if echo.poll() is not None:
                    break
                time.sleep(0.1)
            if probe.count_subscribers("/agegender/detections") < 2:
                print("error: `ros2 topic echo` did not subscribe; it printed:\n"
                      + _indented("".join(reader.other)), file=sys.stderr)
                return 1
            # The echo's subscription is known here, but the node may not have matched it yet (discovery runs per
            # pair of participants), so a reply published now could miss the echo: send blank frames until the
            # echo prints the (empty) answer to one of them.
            import numpy as np

            blank = np.full((64, 64, 3), 100, np.uint8)
            while True:
                try:
                    stamp, _ = probe.request(blank, "bgr8", frame_id="warm_up", timeout=max(5.0, remaining()))
                except TimeoutError as error:
                    print(f"error: warm-up frame: {error}", file=sys.stderr)
                    return 1
                if reader.wait(stamp, 2.0) is not None:
                    break
                if remaining() <= 0 or echo.poll() is not None:
                    print("error: `ros2 topic echo` printed nothing; it said:\n" + _indented("".join(reader.other)),
                          file=sys.stderr)
                    return 1
            print(f"$ {' '.join(echo_command)}", flush=True)
            log_seen = len(Path(launch_log.name).read_text())
            for path, frame, stamp, msg in _answered_photos(probe, photos, remaining):
                printed_text = reader.wait(stamp, max(5.0, min(15.0, remaining())))
                print(f"# {path.name} ({frame.shape[1]}x{frame.shape[0]}): {len(msg.faces)} face(s) on "
                      "/agegender/detections, as `ros2 topic echo` printed it:")
                if printed_text is None:
                    print(f"error: `ros2 topic echo` printed nothing for {path.name}", file=sys.stderr)
                    return 1
                print(printed_text.rstrip("\n"))
                # What the node logged for this photo: whether max_faces left faces out (it logs before it
                # publishes; its output reaches the log file through `ros2 launch` a moment later).
                deadline, note = time.monotonic() + 1.0, None
                while note is None and msg.faces and time.monotonic() < deadline:
                    note = cut_note(Path(launch_log.name).read_text()[log_seen:])
                    time.sleep(0.05)
                log_seen = len(Path(launch_log.name).read_text())
                if note:
                    print(note)
                print("---", flush=True)
                printed += 1
                written += _save_annotated(probe, stamp, out_dir, path)
    except TimeoutError:  # the node did not answer a photo (said by _answered_photos)
        return 1
    finally:
        _stop(echo, 10.0)
        launch_rc = _stop(launch)
        if launch is not None:
            tail = Path(launch_log.name).read_text().splitlines()
            stopping = [line for line in tail if "[launch]" in line or "process has" in line or "ERROR" in line]
            if printed or launch_rc:
                print(f"ros2 launch stopped (exit {launch_rc}):\n" + _indented("\n".join(stopping[-6:])))
        launch_log.close()
        os.unlink(launch_log.name)
    print(f"wrote {len(written)} annotated frame(s) to {out_dir}/: " + ", ".join(p.name for p in written))
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0 if len(written) == len(photos) == printed else 1


def run_in_process(args, photos: list, weights: str, note: str, out_dir: Path, started: float, domain: int,
                   why: str) -> int:
    from agegender_ros import ros_session as ros  # rclpy from here on
    from agegender_ros.ros_echo import message_to_yaml
    from agegender_ros.weights import default_weights_path

    print(HEADER_IN_PROCESS.format(why=why, detector=args.detector, backend=args.backend, samples=Path(args.samples),
                                   weights=weights or default_weights_path(), out=out_dir, domain=domain) + note)
    sys.stdout.flush()
    remaining = lambda: args.timeout - (time.monotonic() - started)  # noqa: E731
    written = []
    with ros.RosSession(domain_id=domain) as session:
        try:
            node = session.start_node({"weights": weights or "", "detector": args.detector, "backend": args.backend,
                                       "publish_debug_image": True, "diagnostics_period_s": 0.0})
        except ros.StartupError as error:
            print(f"error: the node could not start: {error}", file=sys.stderr)
            return 1
        probe = session.probe(debug_image_topic="/agegender/debug_image", name="agegender_demo_publisher")
        if not probe.wait_ready(max(5.0, remaining()), debug_image=True):
            print("error: the node and the demo publisher did not connect", file=sys.stderr)
            return 1
        try:
            cut_before = node.stats["faces_cut"]
            for path, frame, stamp, msg in _answered_photos(probe, photos, remaining):
                print(f"# {path.name} ({frame.shape[1]}x{frame.shape[0]}): {len(msg.faces)} face(s) on "
                      "/agegender/detections")
                print(message_to_yaml(msg))
                cut, cut_before = node.stats["faces_cut"] - cut_before, node.stats["faces_cut"]
                if cut > 0:
                    print(f"# max_faces ({node.params['max_faces']}) left out {cut} of the {cut + len(msg.faces)} "
                          "faces found")
                print("---", flush=True)
                written += _save_annotated(probe, stamp, out_dir, path)
        except TimeoutError:  # the node did not answer a photo (said by _answered_photos)
            return 1
    print(f"wrote {len(written)} annotated frame(s) to {out_dir}/: " + ", ".join(p.name for p in written))
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0 if len(written) == len(photos) else 1


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agegender_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="folder for the annotated frames (default: demo_out)")
    parser.add_argument("--weights", help="model .pt with its .json card (default: the package's weights)")
    parser.add_argument("--samples", default=str(SAMPLES), help="folder of .jpg photos to publish")
    parser.add_argument("--detector", default="auto", help="face detector of the in-process node (auto | scrfd | "
                        "blazeface | haar); `ros2 launch` uses the launch file's config/nano.yaml")
    parser.add_argument("--backend", default="auto", help="network backend (auto | tensorrt | onnxruntime | torch)")
    parser.add_argument("--no-launch", action="store_true", help="run the node in this process and print with the "
                        "demo's own echo, even where `ros2 launch` is available")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if os.environ.get("AGEGENDER_NETNS") != "1":
        print("note: not inside scripts/netns_run.sh; DDS discovery is limited to localhost "
              "(ROS_AUTOMATIC_DISCOVERY_RANGE) and a private domain id is used", file=sys.stderr)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    # The one-off ONNX export of the weights (first run only) warns about tracing; not what the demo shows.
    warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from agegender_ros.weights import default_weights_path

    photos = sorted(p for p in Path(args.samples).glob("*.jpg"))
    if not photos:
        print(f"error: no .jpg photos in {args.samples}", file=sys.stderr)
        return 2
    weights = args.weights or ""
    untrained = False
    if not weights and not default_weights_path().is_file():
        untrained = True
        weights = untrained_weights()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from agegender_ros.ros_session import private_domain_id

    domain = private_domain_id()
    os.environ["ROS_DOMAIN_ID"] = str(domain)  # the same domain for `ros2 launch`, `ros2 topic echo` and us
    note = (f"NOTE: no trained weights at {default_weights_path()} yet (`make weights` trains them): this run uses "
            "RANDOMLY INITIALISED weights, so the boxes are real but the ages and genders are meaningless.\n"
            if untrained else "")
    missing = "--no-launch" if args.no_launch else ros2_tools_missing()
    if missing is None:
        return run_with_launch(args, photos, weights, note, out_dir, started, domain)
    if not args.no_launch:
        print(f"note: {missing}: falling back to the node inside this process", file=sys.stderr)
    return run_in_process(args, photos, weights, note, out_dir, started, domain, why=missing)


if __name__ == "__main__":
    sys.exit(main())

"""ROS-free logic shared by the node and its launch file: the node's parameter table and the launch arguments.

* `NODE_PARAMETERS`: every parameter of `agegender_node` with its default, description and allowed range or
  choices. `agegender_ros.node` declares them from this table (descriptions and ranges show up in
  `ros2 param describe`), and `validate_parameters` checks a full set of values at start-up, so a bad params
  file gives one clear error listing every problem.
* `LAUNCH_ARGUMENTS` and `plan_launch(values, share_dir, environ)`: what `launch/nano.launch.py` declares and
  how the argument strings turn into the node's parameters (params file + overrides), an optional camera
  driver node and the DDS transport set-up of the processes it starts (`transport_environment`: Fast DDS's
  shared-memory profile for full-size raw frames). The launch file itself only wraps the result in launch
  actions; `node_exit_problem` is what it reports when the node stops with an error.

Nothing here imports ROS, NumPy, OpenCV or torch. Runs on Python 3.8 (JetPack 4.6 containers).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
DETECTORS = ("auto", "scrfd", "blazeface", "haar")
CAMERAS = ("none", "v4l2", "usb_cam", "csi")


class ParameterError(ValueError):
    """Invalid node parameters or launch arguments; str() lists every problem, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    kind: str  # bool | int | float | str | str_list
    choices: tuple = ()
    low: float | None = None  # inclusive range (int / float parameters)
    high: float | None = None
    constraints: str = ""  # extra rule, in words (ParameterDescriptor.additional_constraints)
    # True: `ros2 param set` applies it to the running node from the next frame on. False: it shapes what
    # `configure` builds (model, detector, topics), so it can be set only while the node is unconfigured.
    live: bool = False


NODE_PARAMETERS = (
    ParamSpec("image_topics", ["/camera/image_raw"], "sensor_msgs/Image topics to read. A name ending in "
              "'/compressed' (image_transport's convention) is read as sensor_msgs/CompressedImage instead.",
              "str_list", constraints="valid ROS topic names; together with compressed_image_topics at least one"),
    ParamSpec("compressed_image_topics", [], "sensor_msgs/CompressedImage topics (JPEG or PNG) to read as well.",
              "str_list", constraints="valid ROS topic names"),
    ParamSpec("detections_topic", "/agegender/detections", "Output topic: agegender_ros/AgeGenderArray, one per "
              "processed image (also when no face is found), with the image's header.", "str"),
    ParamSpec("publish_debug_image", False, "Publish the annotated image (sensor_msgs/Image bgr8) on "
              "debug_image_topic; it is drawn only while someone subscribes.", "bool", live=True),
    ParamSpec("debug_image_topic", "/agegender/debug_image", "Output topic of the annotated image.", "str"),
    ParamSpec("publish_vision_msgs", True, "Also publish vision_msgs/Detection2DArray on vision_msgs_topic "
              "(effective only when vision_msgs is installed).", "bool", live=True),
    ParamSpec("vision_msgs_topic", "/agegender/detections_2d", "Output topic of the Detection2DArray.", "str"),
    ParamSpec("weights", "", "Model weights (.pt with its .json card beside it); '' = the package's default "
              "weights (or $AGEGENDER_WEIGHTS).", "str"),
    ParamSpec("engine", "", "TensorRT engine for backend tensorrt, as written by `agegender export --format "
              "tensorrt`; '' = built from the weights on first use and cached.",
              "str"),
    ParamSpec("backend", "auto", "Network backend; auto tries tensorrt, then onnxruntime, then torch.", "str",
              choices=BACKENDS),
    ParamSpec("detector", "auto", "Face detector; auto tries scrfd, then blazeface, then haar.", "str",
              choices=DETECTORS),
    ParamSpec("detector_input_size", 320, "Detector input size in pixels: SCRFD resizes the longer image side "
              "to this; BlazeFace uses its short-range model up to 128, its full-range model above; Haar ignores "
              "it.", "int", low=64, high=1920, constraints="a multiple of 32"),
    ParamSpec("score_threshold", 0.5, "Minimum face detection score.", "float", low=0.0, high=1.0, live=True),
    ParamSpec("max_faces", 32, "At most this many faces per image (the most confident).", "int", low=1, high=256,
              live=True),
    ParamSpec("min_face_size", 0, "Ignore faces whose box is smaller than this (pixels, shorter side).", "int",
              low=0, high=4096, live=True),
    ParamSpec("flip_tta", False, "Also run each face mirrored and average the two (test-time augmentation): "
              "slightly more accurate, more network time per face.", "bool", live=True),
    ParamSpec("num_threads", 2, "CPU threads for the detector and the network (0 = the runtime's default).",
              "int", low=0, high=64),
    ParamSpec("tracking", True, "Track faces across frames (stable track_id) and smooth age and gender.", "bool",
              live=True),
    ParamSpec("smoothing", 0.6, "Weight of the past in the exponential smoothing of age and gender "
              "(0 = per-frame values).", "float", low=0.0, high=0.99, live=True),
    ParamSpec("track_max_missed", 5, "A track is dropped after this many consecutive frames without its face.",
              "int", low=0, high=10000, live=True),
    ParamSpec("track_iou_threshold", 0.3, "Minimum box IoU for a face to continue a track.", "float", low=0.01,
              high=1.0, live=True),
    ParamSpec("max_rate_hz", 0.0, "Process at most this many frames per second (0 = every frame the node can "
              "keep up with; older frames are always dropped in favour of the newest).", "float", low=0.0,
              high=1000.0, live=True),
    ParamSpec("diagnostics_period_s", 1.0, "Period of diagnostic_msgs/DiagnosticArray on /diagnostics "
              "(0 = off; needs diagnostic_msgs).", "float", low=0.0, high=3600.0, live=True),
    ParamSpec("max_image_pixels", 7680 * 4320, "Largest image accepted (width x height, read from the message "
              "or the JPEG/PNG header before anything is decoded); a larger one is skipped with a warning that "
              "names both sizes. The default, 7680 x 4320 (8K UHD, 33.2 Mpx: ros_image.MAX_PIXELS), holds every "
              "video camera's frame.", "int", low=1, high=1_000_000_000, live=True),
    ParamSpec("autostart", True, "Bring the node to active by itself at start-up (configure, then activate; "
              "the start-up fails and the node exits if configure fails, as a node without a lifecycle would). "
              "false: wait in unconfigured for `ros2 lifecycle set <node> configure` / `activate` (a lifecycle "
              "manager). Without rclpy.lifecycle (Foxy, Galactic) the node always starts active.", "bool"),
    ParamSpec("warn_throttle_s", 5.0, "At most one warning per kind (bad image, failed frame) in this many "
              "seconds; the next one says how many were suppressed.", "float", low=0.0, high=3600.0, live=True),
)
PARAMETERS_BY_NAME = {spec.name: spec for spec in NODE_PARAMETERS}

# ROS 2 topic names: tokens of letters, digits and underscores (not starting with a digit) separated by '/',
# optionally absolute ('/') or private ('~/'), with {substitutions}.
_TOPIC_RE = re.compile(r"^(~/|/)?[A-Za-z_{][A-Za-z0-9_{}]*(/[A-Za-z_{][A-Za-z0-9_{}]*)*$")


def default_parameters() -> dict:
    return {spec.name: (list(spec.default) if isinstance(spec.default, list) else spec.default)
            for spec in NODE_PARAMETERS}


def topic_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "an empty topic name"
    if not _TOPIC_RE.match(name):
        return f"{name!r} is not a valid ROS topic name"
    return None


def _type_problem(spec: ParamSpec, value: Any) -> str | None:
    expected = {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number",
                "str": "a string", "str_list": "a list of strings"}[spec.kind]
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "str_list": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
    }[spec.kind]
    if ok:
        return None
    return f"{spec.name}: expected {expected}, got {value!r} ({type(value).__name__})"


def spec_problem(spec: ParamSpec, value: Any) -> str | None:
    """What is wrong with this one value (type, choices, range), or None."""
    problem = _type_problem(spec, value)
    if problem:
        return problem
    if spec.choices and value not in spec.choices:
        return f"{spec.name}: {value!r} is not one of {', '.join(spec.choices)}"
    if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
        return f"{spec.name}: {value!r} is outside the allowed range {spec.low}..{spec.high}"
    return None


def validate_parameters(values: Mapping[str, Any], check_files: bool = True) -> dict:
    """The full, checked parameter set (defaults filled in). Raises ParameterError listing every problem."""
    merged = default_parameters()
    problems = [f"unknown parameter {name!r}" for name in values if name not in PARAMETERS_BY_NAME]
    merged.update({k: v for k, v in values.items() if k in PARAMETERS_BY_NAME})
    for spec in NODE_PARAMETERS:
        problem = spec_problem(spec, merged[spec.name])
        if problem:
            problems.append(problem)
            # Check the rest with the default in its place, so that one run lists every problem.
            merged[spec.name] = list(spec.default) if isinstance(spec.default, list) else spec.default
    for name in ("score_threshold", "smoothing", "track_iou_threshold", "max_rate_hz", "diagnostics_period_s",
                 "warn_throttle_s"):
        merged[name] = float(merged[name])
    merged["image_topics"] = [t.strip() for t in merged["image_topics"] if t.strip()]
    merged["compressed_image_topics"] = [t.strip() for t in merged["compressed_image_topics"] if t.strip()]
    topics = merged["image_topics"] + merged["compressed_image_topics"]
    if not topics:
        problems.append("image_topics and compressed_image_topics are both empty: give at least one input topic")
    for name in ("image_topics", "compressed_image_topics"):
        for topic in merged[name]:
            problem = topic_name_problem(topic)
            if problem:
                problems.append(f"{name}: {problem}")
    duplicates = sorted({t for t in topics if topics.count(t) > 1})
    if duplicates:
        problems.append(f"input topic(s) listed twice: {', '.join(duplicates)}")
    for name in ("detections_topic", "debug_image_topic", "vision_msgs_topic"):
        problem = topic_name_problem(merged[name])
        if problem:
            problems.append(f"{name}: {problem}")
    if merged["detector"] in ("auto", "scrfd") and merged["detector_input_size"] % 32:
        problems.append(f"detector_input_size: {merged['detector_input_size']} is not a multiple of 32 "
                        "(SCRFD needs one)")
    if check_files:
        for name in ("weights", "engine"):
            path = merged[name]
            if path and not os.path.isfile(os.path.expanduser(path)):
                problems.append(f"{name}: file {path!r} does not exist")
        if merged["weights"] and os.path.isfile(os.path.expanduser(merged["weights"])):
            card = os.path.splitext(os.path.expanduser(merged["weights"]))[0] + ".json"
            if not os.path.isfile(card):
                problems.append(f"weights: model card {card!r} is missing (every .pt needs its .json beside it)")
    if merged["backend"] in ("onnxruntime", "torch") and merged["engine"]:
        problems.append(f"engine: set, but backend is {merged['backend']} (an engine is only used by tensorrt)")
    if problems:
        raise ParameterError(problems)
    return merged


def parameters_help() -> str:
    """`python -m agegender_ros.node --help`: every parameter with its type, default, range and meaning."""
    lines = ["agegender_node parameters (set with --ros-args -p NAME:=VALUE or --params-file FILE; the live ones",
             "also at run time with `ros2 param set`):", ""]
    for spec in NODE_PARAMETERS:
        allowed = ""
        if spec.choices:
            allowed = f" [{' | '.join(spec.choices)}]"
        elif spec.low is not None:
            allowed = f" [{spec.low}..{spec.high}]"
        lines.append(f"  {spec.name} ({spec.kind}, default {spec.default!r}){allowed}"
                     + (" live" if spec.live else " (set while unconfigured)"))
        lines.append(f"      {spec.description}" + (f" ({spec.constraints})" if spec.constraints else ""))
    return "\n".join(lines)


def split_topics(value: Mapping[str, Any] | Any) -> tuple[list[str], list[str]]:
    """(raw topics, compressed topics) from the validated parameters: image_topics entries ending in
    '/compressed' move to the compressed list."""
    raw = [t for t in value["image_topics"] if not t.rstrip("/").endswith("/compressed")]
    compressed = [t for t in value["image_topics"] if t.rstrip("/").endswith("/compressed")]
    compressed += [t for t in value["compressed_image_topics"] if t not in compressed]
    return raw, compressed


def detector_options(detector: str, input_size: int, score_threshold: float, threads: int,
                     min_face_size: int) -> dict:
    """Keyword arguments for `faces.DETECTORS[detector]` from the node's parameters."""
    if detector == "scrfd":
        return {"input_size": input_size, "score_threshold": score_threshold, **({"threads": threads} if threads
                                                                                 else {})}
    if detector == "blazeface":
        return {"variant": "short" if input_size <= 128 else "full", "score_threshold": score_threshold,
                **({"threads": threads} if threads else {})}
    if detector == "haar":
        return {"min_size": max(24, min_face_size)}
    raise ValueError(f"no options for detector {detector!r}")


# --------------------------------------------------------------------------------------------------------------
# Launch arguments (launch/nano.launch.py)


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple = ()
    node_parameter: bool = False  # a non-empty value overrides the node parameter of the same name


_LAUNCH_ONLY_ARGUMENTS = (
    LaunchArgument("params_file", "", "Node parameters (YAML); '' = the package's config/nano.yaml (tuned for a "
                   "Jetson Nano; config/desktop.yaml is the desktop variant)."),
    LaunchArgument("image_topics", "", "Input sensor_msgs/Image topic(s), comma-separated (a name ending in "
                   "'/compressed' is read as CompressedImage); '' = from the params file.", node_parameter=True),
    LaunchArgument("compressed_image_topics", "", "Input sensor_msgs/CompressedImage topic(s), comma-separated; "
                   "'' = from the params file.", node_parameter=True),
    LaunchArgument("backend", "", "auto | tensorrt | onnxruntime | torch; '' = from the params file.",
                   ("",) + BACKENDS, node_parameter=True),
    LaunchArgument("weights", "", "Model weights .pt (with its .json card); '' = from the params file / package "
                   "default.", node_parameter=True),
    LaunchArgument("engine", "", "TensorRT engine (`agegender export --format tensorrt`) for backend tensorrt; '' = "
                   "built from the weights.", node_parameter=True),
    LaunchArgument("publish_debug_image", "", "true | false: publish the annotated image; '' = from the params "
                   "file.", node_parameter=True),
    LaunchArgument("camera", "none", "Camera driver to start as well: none | v4l2 (v4l2_camera) | usb_cam | csi "
                   "(Jetson CSI camera through gscam and nvarguscamerasrc).", CAMERAS),
    LaunchArgument("camera_device", "/dev/video0", "Video device of the v4l2 / usb_cam driver; the sensor id "
                   "(0, 1) for csi."),
    LaunchArgument("camera_width", "640", "Camera image width."),
    LaunchArgument("camera_height", "480", "Camera image height."),
    LaunchArgument("camera_fps", "30", "Camera frame rate."),
    LaunchArgument("node_name", "agegender_node", "Name of the age/gender node."),
    LaunchArgument("namespace", "", "Namespace of the nodes."),
    LaunchArgument("log_level", "info", "Log level of the age/gender node: debug | info | warn | error | fatal.",
                   ("debug", "info", "warn", "error", "fatal")),
    LaunchArgument("dds_profile", "auto", "DDS transport of the processes this launch starts: auto = the "
                   "package's Fast DDS profile (config/fastdds_large_shm.xml: shared memory with room for full "
                   "640x480 frames, UDP kept for everyone else) when the RMW is Fast DDS and "
                   "FASTRTPS_DEFAULT_PROFILES_FILE / FASTDDS_DEFAULT_PROFILES_FILE are not set; none = leave DDS "
                   "as it is; or the path of your own Fast DDS profile XML."),
)


def _parameter_argument(spec: ParamSpec) -> LaunchArgument:
    rule = ("; one of " + " | ".join(spec.choices) if spec.choices else
            f"; {spec.low:g}..{spec.high:g}" if spec.low is not None else "")
    kind = {"bool": "true | false", "int": "integer", "float": "number", "str": "string",
            "str_list": "comma-separated list"}[spec.kind]
    return LaunchArgument(spec.name, "", f"Node parameter {spec.name} ({kind}{rule}): {spec.description} "
                          "'' = from the params file.", node_parameter=True)


# Every node parameter is a launch argument too (e.g. detector:=haar score_threshold:=0.6), checked here with the
# node's own rules; a name that is neither is refused, with the closest known one.
LAUNCH_ARGUMENTS = _LAUNCH_ONLY_ARGUMENTS + tuple(
    _parameter_argument(spec) for spec in NODE_PARAMETERS
    if spec.name not in {a.name for a in _LAUNCH_ONLY_ARGUMENTS})
LAUNCH_DEFAULTS = {a.name: a.default for a in LAUNCH_ARGUMENTS}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass
class NodeLaunch:
    """One node to launch: the arguments of launch_ros.actions.Node."""

    package: str
    executable: str
    name: str
    namespace: str = ""
    parameters: list = field(default_factory=list)  # params file paths and {name: value} dicts, in order
    remappings: list = field(default_factory=list)  # (from, to)
    arguments: list = field(default_factory=list)


@dataclass
class LaunchPlan:
    node: NodeLaunch
    camera: NodeLaunch | None
    environment: dict = field(default_factory=dict)  # variables to set for the processes this launch starts


# Fast DDS, the default RMW of Humble, Jazzy and Kilted. A 640x480 bgr8 frame (921,600 bytes) does not fit its
# default shared-memory segment, so between two processes it crosses loopback as UDP fragments, and under CPU
# load about half of a 30 Hz stream was lost before the node (docs/experiments/dds-transport.md). The profile
# below gives each participant a 16 MB shared-memory segment and keeps UDPv4, so processes without the profile
# (a user's `ros2 topic echo`, another machine) still discover and talk to the node.
DDS_PROFILE_FILE = "fastdds_large_shm.xml"  # in config/ (share/agegender_ros/config/ once installed)
FAST_DDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
# Fast DDS 2.x (Humble, Jazzy) reads the first, 3.x (Kilted) the second.
DDS_PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def uses_fast_dds(environ: Mapping[str, str]) -> bool:
    """Whether ROS 2 processes started with this environment use Fast DDS (RMW_IMPLEMENTATION unset = the
    distribution's default, Fast DDS on Humble..Kilted)."""
    return environ.get("RMW_IMPLEMENTATION", "").strip() in ("",) + FAST_DDS_RMWS


def transport_environment(choice: str, environ: Mapping[str, str], share_dir: str) -> dict:
    """Environment variables that give the launched processes the transport `choice` asks for.

    'auto': the package's shared-memory profile, but only where it applies and the user has not chosen: the RMW
    is Fast DDS and neither profile variable is set (a profile of the user's own is never replaced).
    'none': nothing. Anything else: the path of a Fast DDS profile XML, set for both Fast DDS versions.
    """
    choice = choice.strip()
    if choice in ("none", ""):
        return {}
    if choice == "auto":
        if not uses_fast_dds(environ) or any(environ.get(name, "").strip() for name in DDS_PROFILE_VARIABLES):
            return {}
        path = os.path.join(share_dir, "config", DDS_PROFILE_FILE)
    else:
        path = os.path.abspath(os.path.expanduser(choice))
        if not uses_fast_dds(environ):
            raise ParameterError([f"launch argument dds_profile: {choice!r} is a Fast DDS profile, but "
                                  f"RMW_IMPLEMENTATION is {environ.get('RMW_IMPLEMENTATION')!r} (use "
                                  "dds_profile:=none, or that RMW's own configuration)"])
    if not os.path.isfile(path):
        raise ParameterError([f"launch argument dds_profile: {path!r} does not exist"])
    return {name: path for name in DDS_PROFILE_VARIABLES}


def node_exit_problem(name: str, returncode: int | None) -> str | None:
    """What the launch reports when the age/gender node stops by itself with an error (None: no error)."""
    if returncode is None or returncode == 0:
        return None
    if returncode == 2:  # node.EXIT_BAD_PARAMETERS
        reason = "invalid parameters, listed in its error above"
    elif returncode == 1:  # node.EXIT_STARTUP_FAILED, or an uncaught exception
        reason = "it could not start or failed; its error is above"
    elif returncode < 0:
        reason = f"killed by signal {-returncode}"
    else:
        reason = "see its output above"
    return f"{name} exited with status {returncode} ({reason}); stopping the launch"


def parse_list(value: str) -> list[str]:
    """'a, b' or '[a, b]' (YAML-ish, quotes allowed) -> ['a', 'b']. Only commas separate: 'not a topic' stays one
    item (which the topic-name check then refuses) instead of becoming three topics."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip().strip("'\"") for item in text.split(",") if item.strip().strip("'\"")]


def parse_parameter(spec: ParamSpec, text: str) -> Any:
    """A node parameter's value from a launch argument string, checked with the node's rules (type, range,
    choices, topic names). Raises ParameterError naming the launch argument."""
    text = text.strip()
    value: Any = text
    problem = None
    if spec.kind == "bool":
        value = parse_bool(spec.name, text)
    elif spec.kind in ("int", "float"):
        try:
            value = int(text) if spec.kind == "int" else float(text)
        except ValueError:
            problem = f"{text!r} is not {'an integer' if spec.kind == 'int' else 'a number'}"
    elif spec.kind == "str_list":
        value = parse_list(text)
        problems = [topic_name_problem(t) for t in value if spec.name.endswith("topics")]
        problem = "; ".join(p for p in problems if p) or None
    elif spec.name.endswith("_topic"):
        problem = topic_name_problem(text)
    if problem is None:
        problem = spec_problem(spec, value)
        if problem and problem.startswith(spec.name + ": "):
            problem = problem[len(spec.name) + 2:]
    if problem:
        raise ParameterError([f"launch argument {spec.name}: {problem}"])
    return value


def unknown_argument_problems(names) -> list[str]:
    """Launch arguments given that this launch file does not know, each with the closest known name."""
    import difflib

    problems = []
    for name in names:
        if name in LAUNCH_DEFAULTS:
            continue
        close = difflib.get_close_matches(name, list(LAUNCH_DEFAULTS), n=1, cutoff=0.6)
        problems.append(f"unknown launch argument {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                        + "; `ros2 launch agegender_ros nano.launch.py --show-args` lists them all")
    return problems


# Added by `ros2 launch --launch-prefix ...` itself.
ROS2_LAUNCH_OWN_ARGUMENTS = ("launch-prefix", "launch-prefix-filter")


def command_line_arguments(argv, launch_file: str = "nano.launch.py") -> list[str] | None:
    """The `name:=value` names given to `ros2 launch ... nano.launch.py` (argv: sys.argv of `ros2 launch`) when
    this launch file is the one on the command line; None when it is included from another launch file (whose
    arguments are not ours to judge)."""
    argv = list(argv or [])
    positional = [a for a in argv if ":=" not in a]
    if not any(os.path.basename(a) == launch_file for a in positional):
        return None
    return [name for name in (a.split(":=", 1)[0] for a in argv if ":=" in a and not a.startswith("-"))
            if name not in ROS2_LAUNCH_OWN_ARGUMENTS]


def params_file_problem(path: str) -> str | None:
    """Why a params file cannot be read as ROS 2 parameters (not YAML, not `node: {ros__parameters: {...}}`)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        return f"launch argument params_file: cannot read {path!r} ({error.strerror or error})"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        return f"launch argument params_file: {path!r} is not valid YAML{where}: {what}"
    if not isinstance(data, dict) or not data:
        return f"launch argument params_file: {path!r} holds no `<node name or /**>: {{ros__parameters: ...}}` map"
    for key, value in data.items():
        if not isinstance(value, dict):
            return f"launch argument params_file: {path!r}: {key!r} is not a map"
        inner = value.get("ros__parameters")
        if inner is None and all(isinstance(v, dict) for v in value.values()):
            continue  # a namespace level: /ns: {node: {ros__parameters: ...}}
        if not isinstance(inner, dict):
            return f"launch argument params_file: {path!r}: {key!r} has no `ros__parameters:` map"
    return None


def parse_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParameterError([f"launch argument {name}: {value!r} is not true or false"])


def camera_launch(kind: str, device: str, width: int, height: int, fps: int, topic: str,
                  namespace: str = "") -> NodeLaunch | None:
    """The camera driver node publishing sensor_msgs/Image on `topic`, or None for kind 'none'."""
    if kind == "none":
        return None
    if kind == "v4l2":
        # ros-<distro>-v4l2-camera. YUYV straight from the camera, converted by agegender_node: half the bytes of
        # rgb8 on the wire and no conversion in the driver.
        return NodeLaunch("v4l2_camera", "v4l2_camera_node", "camera", namespace, [{
            "video_device": device, "image_size": [width, height], "pixel_format": "YUYV",
            "output_encoding": "yuv422_yuy2", "time_per_frame": [1, fps], "camera_frame_id": "camera_optical_frame",
        }], [("image_raw", topic), ("camera_info", _sibling(topic, "camera_info"))])
    if kind == "usb_cam":
        # ros-<distro>-usb-cam.
        return NodeLaunch("usb_cam", "usb_cam_node_exe", "camera", namespace, [{
            "video_device": device, "image_width": width, "image_height": height, "framerate": float(fps),
            "pixel_format": "yuyv", "frame_id": "camera_optical_frame",
        }], [("image_raw", topic), ("camera_info", _sibling(topic, "camera_info"))])
    if kind == "csi":
        # Jetson CSI camera (e.g. Raspberry Pi v2 / IMX219) through the gscam driver (ros-drivers/gscam, ros2
        # branch, built from source): nvarguscamerasrc -> NVMM -> nvvidconv -> BGRx -> videoconvert -> RGB.
        sensor = device if device.isdigit() else "0"
        pipeline = (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
                    f"framerate={fps}/1,format=NV12 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                    "video/x-raw,format=RGB")
        return NodeLaunch("gscam", "gscam_main", "camera", namespace, [{
            "gscam_config": pipeline, "image_encoding": "rgb8", "frame_id": "camera_optical_frame",
            "camera_name": "csi_camera", "sync_sink": False, "use_gst_timestamps": False,
        }], [("camera/image_raw", topic), ("camera/camera_info", _sibling(topic, "camera_info"))])
    raise ParameterError([f"launch argument camera: {kind!r} is not one of {', '.join(CAMERAS)}"])


def _sibling(topic: str, name: str) -> str:
    head = topic.rsplit("/", 1)[0] if "/" in topic else ""
    return f"{head}/{name}" if head or topic.startswith("/") else name


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ParameterError([f"launch argument {name}: {value!r} is not a positive integer"])
    return number


def plan_launch(values: Mapping[str, str], share_dir: str, environ: Mapping[str, str] | None = None,
                given: list | None = None) -> LaunchPlan:
    """Launch argument strings -> the age/gender node (+ camera node) and the environment variables to set for
    them (`environ`: the launch's environment, default os.environ). Raises ParameterError when one is bad.
    `given`: the argument names on the command line (command_line_arguments), refused when unknown.

    Only arguments that are set (non-empty) override the params file; empty lists are never passed (rcl's
    YAML parser rejects empty arrays).
    """
    args = dict(LAUNCH_DEFAULTS)
    args.update({k: ("" if v is None else str(v)) for k, v in values.items() if k in LAUNCH_DEFAULTS})
    problems = unknown_argument_problems(given or [])
    for argument in LAUNCH_ARGUMENTS:
        if argument.choices and args[argument.name] not in argument.choices:
            problems.append(f"launch argument {argument.name}: {args[argument.name]!r} is not one of "
                            f"{', '.join(c for c in argument.choices if c)}")
    params_file = args["params_file"] or os.path.join(share_dir, "config", "nano.yaml")
    if not os.path.isfile(params_file):
        problems.append(f"launch argument params_file: {params_file!r} does not exist")
    else:
        problem = params_file_problem(params_file)
        if problem:
            problems.append(problem)
    if problems:
        raise ParameterError(problems)

    overrides: dict = {}
    for argument in LAUNCH_ARGUMENTS:
        if not argument.node_parameter or not args[argument.name].strip():
            continue
        try:
            value = parse_parameter(PARAMETERS_BY_NAME[argument.name], args[argument.name])
        except ParameterError as error:
            problems += error.problems
            continue
        if argument.name in ("weights", "engine"):
            value = os.path.expanduser(value)
        if value != []:  # rcl's YAML parser rejects empty lists
            overrides[argument.name] = value
    if args["engine"] and not args["backend"]:
        overrides["backend"] = "tensorrt"
    if problems:
        raise ParameterError(problems)

    arguments = ["--ros-args", "--log-level", args["log_level"]]
    node = NodeLaunch("agegender_ros", "agegender_node", args["node_name"], args["namespace"],
                      [params_file] + ([overrides] if overrides else []), [], arguments)
    topic = (overrides.get("image_topics") or ["/camera/image_raw"])[0]
    if topic.rstrip("/").endswith("/compressed") and args["camera"] != "none":
        raise ParameterError(["launch argument camera: the camera drivers publish raw images; give a raw "
                              "image_topics entry (not .../compressed) as the first one"])
    camera = camera_launch(args["camera"], args["camera_device"],
                           _positive_int("camera_width", args["camera_width"]),
                           _positive_int("camera_height", args["camera_height"]),
                           _positive_int("camera_fps", args["camera_fps"]), topic, args["namespace"])
    environment = transport_environment(args["dds_profile"], os.environ if environ is None else environ,
                                        share_dir)
    return LaunchPlan(node, camera, environment)

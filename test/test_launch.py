"""The launch file and its ROS-free logic (agegender_ros.launch_args), the parameter table, the config files,
and Python 3.8 syntax of the modules that run on a Jetson.

launch/nano.launch.py is loaded with the real `launch` / `launch_ros` packages and its OpaqueFunction run in a real
LaunchContext (skipped where they are missing, an error where the underlay was built: AGEGENDER_REQUIRE_ROS=1).
The real `ros2 launch` runs in the launch tests, test/launch/*.py (add_launch_test in CMakeLists.txt).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from agegender_ros import launch_args as la
from conftest import ros_import

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "nano.launch.py"
CONFIGS = [REPO / "config" / "nano.yaml", REPO / "config" / "desktop.yaml"]


# ----------------------------------------------------------------------------------------- parameter table
def test_defaults_are_valid():
    params = la.validate_parameters({})
    assert params["image_topics"] == ["/camera/image_raw"]
    assert params["detections_topic"] == "/agegender/detections"
    assert params["tracking"] is True and params["backend"] == "auto"


def test_every_parameter_is_described_with_its_rules():
    for spec in la.NODE_PARAMETERS:
        assert len(spec.description) > 20, spec.name
        assert la.spec_problem(spec, spec.default) is None, spec.name
        if spec.kind in ("int", "float"):
            assert spec.low is not None and spec.high is not None, spec.name
    names = [spec.name for spec in la.NODE_PARAMETERS]
    assert len(names) == len(set(names))
    for required in ("image_topics", "compressed_image_topics", "detections_topic", "publish_debug_image",
                     "debug_image_topic", "weights", "backend", "detector", "detector_input_size",
                     "score_threshold", "max_faces", "min_face_size", "tracking", "smoothing", "track_max_missed",
                     "max_rate_hz", "publish_vision_msgs", "diagnostics_period_s"):
        assert required in names


@pytest.mark.parametrize("values,message", [
    ({"score_threshold": 1.5}, "score_threshold: 1.5 is outside the allowed range 0.0..1.0"),
    ({"max_faces": 0}, "max_faces: 0 is outside"),
    ({"max_faces": 257}, "max_faces: 257 is outside"),
    ({"backend": "cuda"}, "backend: 'cuda' is not one of auto, tensorrt, onnxruntime, torch"),
    ({"detector": "yolo"}, "detector: 'yolo' is not one of"),
    ({"smoothing": 1.0}, "smoothing: 1.0 is outside"),
    ({"max_faces": "many"}, "max_faces: expected an integer"),
    ({"tracking": "yes"}, "tracking: expected a boolean"),
    ({"image_topics": "/camera/image_raw"}, "image_topics: expected a list of strings"),
    ({"image_topics": ["bad topic"]}, "'bad topic' is not a valid ROS topic name"),
    ({"image_topics": ["/a//b"]}, "not a valid ROS topic name"),
    ({"image_topics": [], "compressed_image_topics": []}, "both empty"),
    ({"image_topics": ["/a"], "compressed_image_topics": ["/a"]}, "listed twice"),
    ({"detections_topic": ""}, "detections_topic: an empty topic name"),
    ({"detector_input_size": 300}, "not a multiple of 32"),
    ({"weights": "/nonexistent/model.pt"}, "weights: file '/nonexistent/model.pt' does not exist"),
    ({"engine": "/nonexistent/model.engine", "backend": "tensorrt"}, "engine: file"),
    ({"scor_threshold": 0.5}, "unknown parameter 'scor_threshold'"),
])
def test_bad_values_give_clear_errors(values, message):
    with pytest.raises(la.ParameterError) as info:
        la.validate_parameters(values)
    assert message in str(info.value)


def test_all_problems_are_listed_at_once():
    with pytest.raises(la.ParameterError) as info:
        la.validate_parameters({"score_threshold": 2.0, "max_faces": -1, "backend": "x"})
    assert len(info.value.problems) == 3


def test_weights_need_their_card(tmp_path):
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"x")
    with pytest.raises(la.ParameterError, match="model card"):
        la.validate_parameters({"weights": str(weights)})
    (tmp_path / "m.json").write_text("{}")
    assert la.validate_parameters({"weights": str(weights)})["weights"] == str(weights)
    assert la.validate_parameters({"weights": "/not/checked.pt"}, check_files=False)


def test_topic_split_and_detector_options():
    params = la.validate_parameters({"image_topics": ["/a/image_raw", "/b/image_raw/compressed"],
                                     "compressed_image_topics": ["/c/jpeg"]})
    assert la.split_topics(params) == (["/a/image_raw"], ["/b/image_raw/compressed", "/c/jpeg"])
    assert la.detector_options("scrfd", 256, 0.4, 2, 0) == {"input_size": 256, "score_threshold": 0.4, "threads": 2}
    assert la.detector_options("scrfd", 256, 0.4, 0, 0) == {"input_size": 256, "score_threshold": 0.4}
    assert la.detector_options("blazeface", 128, 0.5, 1, 0)["variant"] == "short"
    assert la.detector_options("blazeface", 192, 0.5, 1, 0)["variant"] == "full"
    assert la.detector_options("haar", 320, 0.5, 2, 40) == {"min_size": 40}


def test_detector_options_fit_the_detectors():
    """Each option set is accepted by the detector class's constructor (signature check, no model load)."""
    import inspect

    from agegender_ros.faces import DETECTORS

    for name, cls in DETECTORS.items():
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert set(la.detector_options(name, 320, 0.5, 2, 0)) <= accepted, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_files_are_valid(path):
    data = yaml.safe_load(path.read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) <= set(la.PARAMETERS_BY_NAME)
    # rcl's YAML parser rejects empty arrays: none in the shipped files.
    assert all(value != [] for value in params.values())
    for name, value in params.items():  # floats are written as floats (rclpy types parameters strictly)
        if la.PARAMETERS_BY_NAME[name].kind == "float":
            assert isinstance(value, float), name
    la.validate_parameters(params)


def test_nano_config_is_tuned_for_the_nano():
    params = yaml.safe_load(CONFIGS[0].read_text())["/**"]["ros__parameters"]
    assert params["detector"] == "scrfd" and params["detector_input_size"] <= 320
    assert params["max_faces"] <= 16 and params["max_rate_hz"] > 0
    assert params["publish_debug_image"] is False


def test_docs_describe_every_parameter_and_launch_argument():
    docs = REPO / "docs" / "ros.md"
    if not docs.is_file():
        pytest.skip("docs/ros.md not written yet")
    text = docs.read_text()
    for spec in la.NODE_PARAMETERS:
        assert f"`{spec.name}`" in text, spec.name
    for argument in la.LAUNCH_ARGUMENTS:
        assert f"`{argument.name}`" in text, argument.name


# ---------------------------------------------------------------------------------------- launch arguments
def test_plan_with_defaults_uses_nano_yaml_and_no_camera():
    plan = la.plan_launch({}, str(REPO))
    assert plan.camera is None
    node = plan.node
    assert (node.package, node.executable, node.name) == ("agegender_ros", "agegender_node", "agegender_node")
    assert node.parameters == [str(REPO / "config" / "nano.yaml")]  # nothing overridden
    assert node.arguments[:3] == ["--ros-args", "--log-level", "info"]


def test_plan_overrides_only_what_is_set():
    plan = la.plan_launch({"image_topics": "/front/image_raw, /rear/image_raw/compressed", "backend": "torch",
                           "weights": "/w/m.pt", "publish_debug_image": "True", "log_level": "debug",
                           "params_file": str(CONFIGS[1]), "namespace": "robot1", "dds_profile": "none"}, "/unused")
    assert plan.node.parameters == [str(CONFIGS[1]), {
        "image_topics": ["/front/image_raw", "/rear/image_raw/compressed"], "backend": "torch",
        "weights": "/w/m.pt", "publish_debug_image": True}]
    assert plan.node.namespace == "robot1"
    assert "debug" in plan.node.arguments
    # An engine alone implies the TensorRT backend.
    plan = la.plan_launch({"engine": "/e/model.engine"}, str(REPO))
    assert plan.node.parameters[1] == {"engine": "/e/model.engine", "backend": "tensorrt"}
    # YAML-style list, empty list never passed.
    plan = la.plan_launch({"image_topics": "['/a', '/b']", "compressed_image_topics": "[]"}, str(REPO))
    assert plan.node.parameters[1] == {"image_topics": ["/a", "/b"]}


@pytest.mark.parametrize("camera,package,remapped", [
    ("v4l2", "v4l2_camera", "image_raw"),
    ("usb_cam", "usb_cam", "image_raw"),
    ("csi", "gscam", "camera/image_raw"),
])
def test_camera_drivers(camera, package, remapped):
    plan = la.plan_launch({"camera": camera, "image_topics": "/cam/image_raw", "camera_width": "1280",
                           "camera_height": "720", "camera_fps": "15", "camera_device": "/dev/video1"}, str(REPO))
    cam = plan.camera
    assert cam.package == package
    assert (remapped, "/cam/image_raw") in cam.remappings
    assert any(to == "/cam/camera_info" for _, to in cam.remappings)
    params = cam.parameters[0]
    text = repr(params)
    assert "1280" in text and "720" in text and "15" in text
    if camera == "csi":
        assert "nvarguscamerasrc" in params["gscam_config"]
    else:
        assert params["video_device"] == "/dev/video1"


@pytest.mark.parametrize("values,message", [
    ({"backend": "gpu"}, "backend: 'gpu' is not one of"),
    ({"camera": "kinect"}, "camera: 'kinect' is not one of"),
    ({"params_file": "/nonexistent.yaml"}, "does not exist"),
    ({"publish_debug_image": "maybe"}, "not true or false"),
    ({"image_topics": "bad topic!"}, "not a valid ROS topic name"),
    ({"camera": "v4l2", "camera_width": "wide"}, "camera_width"),
    ({"camera": "v4l2", "image_topics": "/cam/image_raw/compressed"}, "raw"),
])
def test_bad_launch_arguments(values, message):
    with pytest.raises(la.ParameterError, match=message):
        la.plan_launch(values, str(REPO))


def test_every_node_parameter_is_a_checked_launch_argument():
    """detector:=nonsense used to start SCRFD silently (a node parameter, not a launch argument)."""
    names = [a.name for a in la.LAUNCH_ARGUMENTS]
    assert len(names) == len(set(names))
    for spec in la.NODE_PARAMETERS:
        assert spec.name in names, spec.name
    plan = la.plan_launch({"detector": "haar", "score_threshold": "0.6", "max_faces": "4", "flip_tta": "true",
                           "smoothing": "0", "detections_topic": "/out/faces", "tracking": "off"}, str(REPO))
    assert plan.node.parameters[1] == {"detector": "haar", "score_threshold": 0.6, "max_faces": 4,
                                       "flip_tta": True, "smoothing": 0.0, "detections_topic": "/out/faces",
                                       "tracking": False}
    assert isinstance(plan.node.parameters[1]["smoothing"], float)  # rclpy types parameters strictly


@pytest.mark.parametrize("values,message", [
    ({"detector": "nonsense"}, "launch argument detector: 'nonsense' is not one of auto, scrfd, blazeface, haar"),
    ({"score_threshold": "1.5"}, "launch argument score_threshold: 1.5 is outside the allowed range 0.0..1.0"),
    ({"max_faces": "many"}, "launch argument max_faces: 'many' is not an integer"),
    ({"max_faces": "2.5"}, "launch argument max_faces: '2.5' is not an integer"),
    ({"smoothing": "x"}, "launch argument smoothing: 'x' is not a number"),
    ({"flip_tta": "sometimes"}, "launch argument flip_tta: 'sometimes' is not true or false"),
    ({"image_topics": "not a topic"}, "launch argument image_topics: 'not a topic' is not a valid ROS topic name"),
    ({"compressed_image_topics": "/ok, bad name"}, "'bad name' is not a valid ROS topic name"),
    ({"detections_topic": "no spaces please"}, "launch argument detections_topic: 'no spaces please' is not"),
])
def test_launch_arguments_get_the_nodes_rules(values, message):
    with pytest.raises(la.ParameterError) as info:
        la.plan_launch(values, str(REPO))
    assert message in str(info.value)


def test_topic_lists_split_on_commas_only():
    assert la.parse_list("/a, /b") == ["/a", "/b"]
    assert la.parse_list("['/a', '/b']") == ["/a", "/b"]
    assert la.parse_list("not a topic") == ["not a topic"]  # one (invalid) name, not three topics
    assert la.parse_list("[]") == [] and la.parse_list("") == []


def test_unknown_launch_arguments_are_refused_with_the_closest_name():
    with pytest.raises(la.ParameterError) as info:
        la.plan_launch({}, str(REPO), given=["detectr", "image_topic", "camera", "frobnicate"])
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("unknown launch argument 'detectr' (did you mean 'detector'?)")
    assert "(did you mean 'image_topics'?)" in problems[1]
    assert problems[2].startswith("unknown launch argument 'frobnicate';") and "--show-args" in problems[2]
    assert la.plan_launch({}, str(REPO), given=["camera", "detector"]).camera is None


def test_only_the_command_line_of_this_launch_file_is_judged():
    argv = ["/opt/ros/jazzy/bin/ros2", "launch", "agegender_ros", "nano.launch.py", "detectr:=scrfd",
            "launch-prefix:=gdb -ex run"]
    assert la.command_line_arguments(argv) == ["detectr"]
    assert la.command_line_arguments(["ros2", "launch", "/ws/src/agegender_ros/launch/nano.launch.py",
                                      "a:=1"]) == ["a"]
    # Included from another launch file: that file's arguments are not ours to refuse.
    assert la.command_line_arguments(["ros2", "launch", "robot_bringup", "robot.launch.py", "robot:=r2"]) is None
    assert la.command_line_arguments(["launch_test", "test/launch/launch_detections.py"]) is None


@pytest.mark.parametrize("text,message", [
    ("/**:\n  ros__parameters:\n    score_threshold: [1,\n", "is not valid YAML at line 4, column 1"),
    ("/**:\n  ros__parameters:\n\tmax_faces: 3\n", "is not valid YAML at line 3"),
    ("- a\n- b\n", "holds no `<node name or /**>: {ros__parameters: ...}` map"),
    ("/**:\n  max_faces: 3\n", "'/**' has no `ros__parameters:` map"),
])
def test_params_file_problems_are_one_clear_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    problem = la.params_file_problem(str(path))
    assert problem is not None and message in problem and "\n" not in problem, problem
    with pytest.raises(la.ParameterError, match="launch argument params_file"):
        la.plan_launch({"params_file": str(path)}, str(REPO))
    for config in CONFIGS:
        assert la.params_file_problem(str(config)) is None


# ---------------------------------------------------------------------------------------- the DDS transport
PROFILE = REPO / "config" / la.DDS_PROFILE_FILE
BOTH_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


@pytest.mark.parametrize("rmw", ["", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"])
def test_fast_dds_gets_the_shared_memory_profile(rmw):
    environ = {"RMW_IMPLEMENTATION": rmw} if rmw else {}
    assert la.transport_environment("auto", environ, str(REPO)) == {name: str(PROFILE) for name in BOTH_VARIABLES}
    plan = la.plan_launch({}, str(REPO), environ)
    assert plan.environment == {name: str(PROFILE) for name in BOTH_VARIABLES}
    assert plan.node.parameters == [str(REPO / "config" / "nano.yaml")]  # transport only, no node parameter


@pytest.mark.parametrize("environ", [
    {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
    {"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"},
    {"FASTRTPS_DEFAULT_PROFILES_FILE": "/home/me/my_profile.xml"},
    {"FASTDDS_DEFAULT_PROFILES_FILE": "/home/me/my_profile.xml", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"},
], ids=["cyclonedds", "zenoh", "own-profile-fastdds2", "own-profile-fastdds3"])
def test_auto_leaves_other_rmws_and_the_users_own_profile_alone(environ):
    assert la.transport_environment("auto", environ, str(REPO)) == {}
    assert la.plan_launch({}, str(REPO), environ).environment == {}


def test_dds_profile_none_and_explicit(tmp_path):
    assert la.plan_launch({"dds_profile": "none"}, str(REPO), {}).environment == {}
    own = tmp_path / "profile.xml"
    own.write_text("<profiles/>")
    assert la.plan_launch({"dds_profile": str(own)}, str(REPO), {}).environment == \
        {name: str(own) for name in BOTH_VARIABLES}
    with pytest.raises(la.ParameterError, match="does not exist"):
        la.plan_launch({"dds_profile": str(tmp_path / "missing.xml")}, str(REPO), {})
    with pytest.raises(la.ParameterError, match="RMW_IMPLEMENTATION is 'rmw_cyclonedds_cpp'"):
        la.plan_launch({"dds_profile": str(own)}, str(REPO), {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    with pytest.raises(la.ParameterError, match="dds_profile"):  # auto, but the package lacks its profile
        la.plan_launch({}, str(tmp_path), {})


def test_profile_keeps_udp_and_gives_shared_memory_room_for_full_frames():
    """The shipped profile: a shared-memory segment that holds several 640x480 bgr8 frames, and UDPv4 besides it
    (discovery, and processes without the profile -- a user's `ros2 topic echo` -- still reach the node)."""
    import xml.etree.ElementTree as ET

    ns = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = ET.parse(PROFILE).getroot()
    transports = {d.find("p:transport_id", ns).text: d for d in root.iterfind("p:transport_descriptors/"
                                                                                "p:transport_descriptor", ns)}
    kinds = {tid: d.find("p:type", ns).text for tid, d in transports.items()}
    assert sorted(kinds.values()) == ["SHM", "UDPv4"]
    shm = next(d for d in transports.values() if d.find("p:type", ns).text == "SHM")
    assert int(shm.find("p:segment_size", ns).text) >= 4 * 640 * 480 * 3
    participant = root.find("p:participant", ns)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind("p:rtps/p:userTransports/p:transport_id", ns)]
    assert sorted(used) == sorted(transports)
    # The bench and the docs show the same profile.
    assert "<segment_size>16777216</segment_size>" in (REPO / "docs" / "ros.md").read_text()


@pytest.mark.parametrize("code,words", [(2, "invalid parameters"), (1, "could not start"), (-9, "signal 9"),
                                        (3, "status 3")])
def test_node_exit_problem(code, words):
    assert la.node_exit_problem("agegender_node", 0) is None
    assert la.node_exit_problem("agegender_node", None) is None
    message = la.node_exit_problem("agegender_node", code)
    assert message.startswith(f"agegender_node exited with status {code}") and words in message


# ------------------------------------------------------------------------------------------ the launch file
def _load_launch_file():
    spec = importlib.util.spec_from_file_location("agegender_nano_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_launch():
    """The real launch / launch_ros (built from ../shared/ros2 into the underlay, or a ROS 2 installation). Where
    the underlay was built (AGEGENDER_REQUIRE_ROS=1) their absence is an error, elsewhere a skip."""
    ros_import("launch_ros", "launch_ros is not installed (no wheel on PyPI: built from ../shared/ros2 by "
                             "scripts/ros_underlay.sh, or from a ROS 2 install)")


def _visit_launch_file(monkeypatch, values=None, environment=None, argv=None):
    """Load launch/nano.launch.py with the real launch packages, declare its arguments in a real LaunchContext,
    set `values` as if given on the command line, and run its OpaqueFunction. Returns (the module, the declared
    arguments, its GroupAction, the context)."""
    _real_launch()
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction

    module = _load_launch_file()
    monkeypatch.setattr(module, "get_package_share_directory", lambda name: str(REPO))  # the source tree
    monkeypatch.setattr(sys, "argv", argv or ["ros2", "launch", "agegender_ros", "nano.launch.py"] +
                        [f"{k}:={v}" for k, v in (values or {}).items()])
    for name in ("RMW_IMPLEMENTATION",) + BOTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in (environment or {}).items():
        monkeypatch.setenv(name, value)
    description = module.generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    context = LaunchContext()
    for action in declared:
        action.visit(context)
    context.launch_configurations.update(values or {})
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    (group,) = opaque.visit(context)
    assert isinstance(group, GroupAction)
    return module, declared, group, context


def _by_type(group):
    by_type = {}
    for action in group.get_sub_entities():
        by_type.setdefault(type(action).__name__, []).append(action)
    return by_type


def _launch_parameter_files():
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"agegender_launch-{os.getuid()}"
    return sorted(folder.glob(f"{os.getpid()}-*.yaml")) if folder.is_dir() else []


def test_launch_file_with_real_launch_ros(monkeypatch):
    _real_launch()  # a skip where launch_ros is missing (test/launch/ would pass for `launch`)
    from launch.utilities import perform_substitutions

    before = _launch_parameter_files()
    module, declared, group, context = _visit_launch_file(monkeypatch)
    assert [d.name for d in declared] == [a.name for a in la.LAUNCH_ARGUMENTS]
    camera_arg = next(d for d in declared if d.name == "camera")
    assert camera_arg.choices == list(la.CAMERAS)
    actions = _by_type(group)
    # Scoped with forwarding: the variables reach only the processes of this launch.
    names = [type(a).__name__ for a in group.get_sub_entities()]
    assert names[:2] == ["PushLaunchConfigurations", "PushEnvironment"]
    assert names[-2:] == ["PopEnvironment", "PopLaunchConfigurations"]
    (node,) = actions["Node"]
    assert (node.node_package, node.node_executable) == ("agegender_ros", "agegender_node")
    assert sorted((perform_substitutions(context, a.name), perform_substitutions(context, a.value))
                  for a in actions["SetEnvironmentVariable"]) == [
        (name, str(REPO / "config" / la.DDS_PROFILE_FILE)) for name in sorted(BOTH_VARIABLES)]
    assert _launch_parameter_files() == before  # no launch argument given: no parameter file written
    # The node is required: an exit with an error stops the launch with the node's reason (ros2 launch exits 1).
    (handler,) = [a.event_handler for a in actions["RegisterEventHandler"]]
    assert type(handler).__name__ == "OnProcessExit"
    on_exit = module._exit_handler("agegender_node")
    running = types.SimpleNamespace(is_shutdown=False)
    assert on_exit(types.SimpleNamespace(returncode=0), running) is None
    with pytest.raises(RuntimeError, match="agegender_node exited with status 2 \\(invalid parameters"):
        on_exit(types.SimpleNamespace(returncode=2), running)
    assert on_exit(types.SimpleNamespace(returncode=-15), types.SimpleNamespace(is_shutdown=True)) is None


def test_launch_file_passes_arguments_in_a_file_it_removes(monkeypatch):
    """Launch arguments reach the node in a YAML file of the launch's own (launch_ros would leave a
    /tmp/launch_params_* file per launch), removed on shutdown."""
    _real_launch()  # a skip where launch_ros is missing (test/launch/ would pass for `launch`)
    from launch.events import Shutdown

    _, _, group, context = _visit_launch_file(
        monkeypatch, {"camera": "v4l2", "image_topics": "/cam/image_raw", "backend": "onnxruntime",
                      "score_threshold": "0.6"}, environment={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    actions = _by_type(group)
    camera, node = actions["Node"]
    assert (camera.node_package, node.node_package) == ("v4l2_camera", "agegender_ros")
    assert "SetEnvironmentVariable" not in actions  # not Fast DDS: no profile
    (path,) = _launch_parameter_files()
    assert yaml.safe_load(path.read_text()) == {"/**": {"ros__parameters": {
        "image_topics": ["/cam/image_raw"], "backend": "onnxruntime", "score_threshold": 0.6}}}
    handlers = [a.event_handler for a in actions["RegisterEventHandler"]]
    (on_shutdown,) = [h for h in handlers if type(h).__name__ == "OnShutdown"]
    on_shutdown.handle(Shutdown(), context)
    assert not path.exists()


@pytest.mark.parametrize("values,message", [
    ({"backend": "nope"}, "backend: 'nope' is not one of"),
    ({"detectr": "scrfd"}, "unknown launch argument 'detectr' (did you mean 'detector'?)"),
    ({"image_topics": "not a topic"}, "'not a topic' is not a valid ROS topic name"),
])
def test_launch_file_refuses_bad_arguments(monkeypatch, values, message):
    with pytest.raises(la.ParameterError) as info:
        _visit_launch_file(monkeypatch, values)
    assert message in str(info.value)


def test_launch_file_included_elsewhere_leaves_the_parents_arguments_alone(monkeypatch):
    _, _, group, _ = _visit_launch_file(monkeypatch, {"robot_name": "r2"},
                                        argv=["ros2", "launch", "my_robot", "bringup.launch.py", "robot_name:=r2"])
    assert len(_by_type(group)["Node"]) == 1


# ----------------------------------------------------------------------------------------- Python 3.8 syntax
@pytest.mark.parametrize("path", ["agegender_ros/node.py", "agegender_ros/tracking.py", "agegender_ros/ros_image.py",
                                  "agegender_ros/image_header.py", "agegender_ros/launch_args.py",
                                  "launch/nano.launch.py"])
def test_runs_on_python_38_syntax(path):
    """JetPack 4.6 containers run Python 3.8: no newer syntax, and no runtime-evaluated PEP 604/585 annotations."""
    source = (REPO / path).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    has_future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                     any(a.name == "annotations" for a in n.names) for n in tree.body)
    for node in ast.walk(tree):
        # Subscripted builtins / X | Y outside annotations are evaluated at run time: 3.9+/3.10+ only.
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                node.value.id in ("list", "dict", "tuple", "set", "type"):
            assert has_future, f"{path}:{node.lineno}: list[...] etc. need `from __future__ import annotations`"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("removeprefix", "removesuffix"):
            raise AssertionError(f"{path}:{node.lineno}: str.{node.func.attr} is Python 3.9+")
    _check_runtime_expressions(path, tree)


def _check_runtime_expressions(path, tree):
    """list[int] / X | None outside annotations (e.g. in isinstance or a default) would fail on 3.8."""
    annotation_nodes = set()
    for node in ast.walk(tree):
        for attr in ("annotation", "returns"):
            sub = getattr(node, attr, None)
            if sub is not None:
                annotation_nodes.update(id(n) for n in ast.walk(sub))
    for node in ast.walk(tree):
        if id(node) in annotation_nodes:
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                node.value.id in ("list", "dict", "tuple", "set", "frozenset", "type"):
            raise AssertionError(f"{path}:{node.lineno}: {node.value.id}[...] evaluated at run time")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and \
                any(isinstance(side, ast.Constant) and side.value is None for side in (node.left, node.right)):
            raise AssertionError(f"{path}:{node.lineno}: `X | None` evaluated at run time")


# ----------------------------------------------------------------------------- the shell set-up (README)
@pytest.mark.parametrize("environ,expected", [
    ({}, "profile"),
    ({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}, "profile"),
    ({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, ""),
    ({"FASTRTPS_DEFAULT_PROFILES_FILE": "/home/me/mine.xml"}, "/home/me/mine.xml"),
], ids=["default-rmw", "fastdds", "cyclonedds", "own-profile"])
def test_ros_shell_exports_the_shared_memory_profile(environ, expected):
    """`source scripts/ros_shell.sh` gives every process of the shell (a camera driver in a second terminal) the
    package's Fast DDS profile, where it applies and the user has none of their own."""
    import subprocess

    venv = Path(os.environ.get("AGEGENDER_VENV", REPO / ".venv"))
    if not (venv / "ros_env.sh").is_file():
        pytest.skip(f"{venv}/ros_env.sh missing (scripts/ros_setup.sh)")
    env = {k: v for k, v in os.environ.items() if k not in ("RMW_IMPLEMENTATION",) + BOTH_VARIABLES}
    env.update(environ, AGEGENDER_VENV=str(venv))
    script = ('source scripts/ros_shell.sh 2>/dev/null; '
              'echo "$FASTRTPS_DEFAULT_PROFILES_FILE|$FASTDDS_DEFAULT_PROFILES_FILE"')
    result = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    fastrtps, fastdds = result.stdout.strip().split("|")
    if expected == "profile":
        assert fastrtps == fastdds and fastrtps.endswith("/config/fastdds_large_shm.xml"), result.stdout
        assert Path(fastrtps).is_file()
    else:
        assert fastrtps == expected, result.stdout

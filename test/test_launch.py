"""The launch file and its ROS-free logic (agegender_ros.launch_args), the parameter table, the config files,
and Python 3.8 syntax of the modules that run on a Jetson.

launch/nano.launch.py is exercised here twice: with small stand-ins for the `launch` / `launch_ros` classes it
uses (always), and with the real packages where they import (skipped otherwise, with the reason). The real
`ros2 launch` runs in the launch tests, test/launch/*.py (add_launch_test in CMakeLists.txt).
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from agegender_ros import launch_args as la

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


def _stand_in_modules():
    """Minimal stand-ins for the launch / launch_ros / ament_index_python API the launch file uses."""

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class LaunchDescription:
        def __init__(self, entities):
            self.entities = list(entities)

    class GroupAction:
        def __init__(self, actions, scoped=True, forwarding=True):
            self.actions, self.scoped, self.forwarding = list(actions), scoped, forwarding

    class OnProcessExit:
        def __init__(self, target_action, on_exit):
            self.target_action, self.on_exit = target_action, on_exit

    launch = types.ModuleType("launch")
    launch.LaunchDescription = LaunchDescription
    launch.actions = types.ModuleType("launch.actions")
    launch.actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (Recorder,), {})
    launch.actions.OpaqueFunction = OpaqueFunction
    launch.actions.GroupAction = GroupAction
    launch.actions.RegisterEventHandler = type("RegisterEventHandler", (Recorder,), {})
    launch.actions.SetEnvironmentVariable = type("SetEnvironmentVariable", (Recorder,), {})
    launch.event_handlers = types.ModuleType("launch.event_handlers")
    launch.event_handlers.OnProcessExit = OnProcessExit
    launch.substitutions = types.ModuleType("launch.substitutions")
    launch.substitutions.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    launch_ros.actions = types.ModuleType("launch_ros.actions")
    launch_ros.actions.Node = type("Node", (Recorder,), {})
    ament = types.ModuleType("ament_index_python")
    ament.packages = types.ModuleType("ament_index_python.packages")
    ament.packages.get_package_share_directory = lambda name: str(REPO)
    return {"launch": launch, "launch.actions": launch.actions, "launch.substitutions": launch.substitutions,
            "launch.event_handlers": launch.event_handlers,
            "launch_ros": launch_ros, "launch_ros.actions": launch_ros.actions,
            "ament_index_python": ament, "ament_index_python.packages": ament.packages}


def test_launch_file_with_stand_ins(monkeypatch):
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    description = _load_launch_file().generate_launch_description()
    declared = [e for e in description.entities if type(e).__name__ == "DeclareLaunchArgument"]
    assert [d.args[0] for d in declared] == [a.name for a in la.LAUNCH_ARGUMENTS]
    camera_arg = next(d for d in declared if d.args[0] == "camera")
    assert camera_arg.kwargs["default_value"] == "none" and camera_arg.kwargs["choices"] == list(la.CAMERAS)
    opaque = description.entities[-1]

    def run(environment=None, **values):
        context = types.SimpleNamespace(launch_configurations={**la.LAUNCH_DEFAULTS, **values},
                                        environment=environment or {}, is_shutdown=False)
        (group,) = opaque.function(context)
        assert group.scoped and group.forwarding  # the variables reach only the processes of this launch
        by_type = {}
        for action in group.actions:
            by_type.setdefault(type(action).__name__, []).append(action)
        assert type(group.actions[-1]).__name__ == "Node"
        return context, by_type

    _, actions = run()
    (node,) = [a.kwargs for a in actions["Node"]]
    assert node["package"] == "agegender_ros" and node["executable"] == "agegender_node"
    assert node["parameters"] == [str(REPO / "config" / "nano.yaml")]
    assert sorted(a.args for a in actions["SetEnvironmentVariable"]) == [
        (name, str(REPO / "config" / la.DDS_PROFILE_FILE)) for name in sorted(BOTH_VARIABLES)]
    # The node is required: an exit with an error stops the launch with the node's reason (ros2 launch exits 1).
    (handler,) = [a.args[0] for a in actions["RegisterEventHandler"]]
    assert handler.target_action is actions["Node"][0]
    context = types.SimpleNamespace(is_shutdown=False)
    assert handler.on_exit(types.SimpleNamespace(returncode=0), context) is None
    with pytest.raises(RuntimeError, match="agegender_node exited with status 2 \\(invalid parameters"):
        handler.on_exit(types.SimpleNamespace(returncode=2), context)
    assert handler.on_exit(types.SimpleNamespace(returncode=-15), types.SimpleNamespace(is_shutdown=True)) is None

    _, actions = run(camera="v4l2", image_topics="/cam/image_raw", backend="onnxruntime",
                     environment={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    camera, node = [a.kwargs for a in actions["Node"]]
    assert camera["package"] == "v4l2_camera" and ("image_raw", "/cam/image_raw") in camera["remappings"]
    assert node["parameters"][1] == {"image_topics": ["/cam/image_raw"], "backend": "onnxruntime"}
    assert "SetEnvironmentVariable" not in actions
    with pytest.raises(la.ParameterError):
        run(backend="nope")


def test_launch_file_with_real_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no wheel on PyPI: built from "
                                             "../shared/ros2 by scripts/ros_underlay.sh, or from a ROS 2 install)")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
    from launch_ros.actions import Node

    description = _load_launch_file().generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert [d.name for d in declared] == [a.name for a in la.LAUNCH_ARGUMENTS]
    context = LaunchContext()
    for action in declared:
        action.visit(context)
    context.launch_configurations["params_file"] = str(REPO / "config" / "nano.yaml")
    context.launch_configurations["camera"] = "v4l2"
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    (group,) = opaque.visit(context)
    assert isinstance(group, GroupAction)
    actions = group.get_sub_entities()
    assert len([a for a in actions if isinstance(a, Node)]) == 2
    assert len([a for a in actions if isinstance(a, SetEnvironmentVariable)]) in (0, 2)  # 0: not Fast DDS


# ----------------------------------------------------------------------------------------- Python 3.8 syntax
@pytest.mark.parametrize("path", ["agegender_ros/node.py", "agegender_ros/tracking.py", "agegender_ros/ros_image.py",
                                  "agegender_ros/launch_args.py", "launch/nano.launch.py"])
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

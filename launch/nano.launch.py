"""Age/gender node (+ an optional camera driver) with parameters tuned for a Jetson Nano.

    ros2 launch agegender_ros nano.launch.py
    ros2 launch agegender_ros nano.launch.py camera:=v4l2 camera_device:=/dev/video0
    ros2 launch agegender_ros nano.launch.py image_topics:=/front/image_raw,/rear/image_raw/compressed \
        backend:=tensorrt engine:=/data/agegender.engine publish_debug_image:=true
    ros2 launch agegender_ros nano.launch.py params_file:=/path/to/my.yaml

`ros2 launch agegender_ros nano.launch.py --show-args` lists every argument. All logic (defaults, checks, how
arguments become node parameters, the camera drivers, the DDS transport) lives in the ROS-free module
agegender_ros.launch_args, which the tests cover; this file only wraps its result in launch actions:

* the node (and camera) in a scoped group that first sets the transport's environment variables for them
  (dds_profile:=auto: Fast DDS's shared-memory profile for full-size raw frames; nothing outside the group sees
  them);
* the node is required: when it stops by itself with an error (e.g. invalid parameters, exit status 2), the
  launch stops and exits with a non-zero status, after the node's own error message;
* every node parameter is also a launch argument (detector:=haar); an argument name this file does not know is
  refused with the closest known one, when this file is the one on the `ros2 launch` command line (included
  from another launch file, the names given to that file are its own business);
* the parameters given as launch arguments go to the node in a YAML file of this launch's own, removed when the
  launch ends (launch_ros would leave a /tmp/launch_params_* file behind for each launch);
* the node ends by itself when `ros2 launch` is killed (it watches its parent process: agegender_ros.node).
"""
import os
import sys
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, RegisterEventHandler, \
    SetEnvironmentVariable
from launch.event_handlers import OnProcessExit, OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from agegender_ros.launch_args import LAUNCH_ARGUMENTS, command_line_arguments, node_exit_problem, plan_launch


class NodeFailed(RuntimeError):
    """Raised in the launch when the age/gender node exits with an error: `ros2 launch` then logs
    'Caught exception in launch ...: <message>' and exits with status 1."""


def _node_action(spec, output="screen"):
    return Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                parameters=spec.parameters, remappings=spec.remappings, arguments=spec.arguments, output=output)


def _exit_handler(node_name):
    def on_exit(event, context):
        if context.is_shutdown:  # stopped by the launch (Ctrl-C, end of a test): not an error of the node
            return None
        problem = node_exit_problem(node_name, event.returncode)
        if problem:
            raise NodeFailed(problem)
        return None

    return on_exit


def _parameters_file(plan, actions):
    """Replace the node's parameter dict by a YAML file of this launch (<tmp>/agegender_launch-<uid>/<pid>-*.yaml),
    removed at its shutdown. `ros2 launch` ended by SIGTERM skips the shutdown events (and atexit), so each launch
    also removes the files of launches that are no longer running."""
    import yaml

    dicts = [p for p in plan.node.parameters if isinstance(p, dict)]
    if not dicts:
        return
    folder = os.path.join(tempfile.gettempdir(), f"agegender_launch-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for name in os.listdir(folder):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
    merged = {}
    for d in dicts:
        merged.update(d)
    fd, path = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".yaml", dir=folder)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"/**": {"ros__parameters": merged}}, f)
    plan.node.parameters = [p for p in plan.node.parameters if not isinstance(p, dict)] + [path]

    def remove(*_):
        try:
            os.remove(path)
        except OSError:
            pass

    actions.append(RegisterEventHandler(OnShutdown(on_shutdown=remove)))


def _launch_setup(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    given = command_line_arguments(sys.argv, os.path.basename(__file__))
    plan = plan_launch(values, get_package_share_directory("agegender_ros"), dict(context.environment), given)
    actions = [SetEnvironmentVariable(name, value) for name, value in sorted(plan.environment.items())]
    _parameters_file(plan, actions)
    node = _node_action(plan.node)
    if plan.camera is not None:
        actions.append(_node_action(plan.camera))
    actions += [RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_exit_handler(plan.node.name))), node]
    return [GroupAction(actions, scoped=True, forwarding=True)]


def generate_launch_description():
    arguments = []
    for a in LAUNCH_ARGUMENTS:
        extra = {"choices": [c for c in a.choices]} if a.choices and "" not in a.choices else {}
        arguments.append(DeclareLaunchArgument(a.name, default_value=a.default, description=a.description, **extra))
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])

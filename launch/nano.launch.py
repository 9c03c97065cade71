"""Age/gender node (+ an optional camera driver) with parameters tuned for a Jetson Nano.

    ros2 launch agegender_ros nano.launch.py
    ros2 launch agegender_ros nano.launch.py camera:=v4l2 camera_device:=/dev/video0
    ros2 launch agegender_ros nano.launch.py image_topics:=/front/image_raw,/rear/image_raw/compressed \
        backend:=tensorrt engine:=/data/agegender.engine publish_debug_image:=true
    ros2 launch agegender_ros nano.launch.py params_file:=/path/to/my.yaml

`ros2 launch agegender_ros nano.launch.py --show-args` lists every argument. All logic (defaults, checks, how
arguments become node parameters, the camera drivers) lives in the ROS-free module agegender_ros.launch_args,
which the tests cover; this file only wraps its result in launch actions.
"""
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from agegender_ros.launch_args import LAUNCH_ARGUMENTS, plan_launch


def _node_action(spec, output="screen"):
    return Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                parameters=spec.parameters, remappings=spec.remappings, arguments=spec.arguments, output=output)


def _launch_setup(context, *args, **kwargs):
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    plan = plan_launch(values, get_package_share_directory("agegender_ros"))
    actions = [_node_action(plan.node)]
    if plan.camera is not None:
        actions.insert(0, _node_action(plan.camera))
    return actions


def generate_launch_description():
    arguments = []
    for a in LAUNCH_ARGUMENTS:
        extra = {"choices": [c for c in a.choices]} if a.choices and "" not in a.choices else {}
        arguments.append(DeclareLaunchArgument(a.name, default_value=a.default, description=a.description, **extra))
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])

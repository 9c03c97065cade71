"""agegender_ros: the paper's multi-task age/gender CNN (100,951 parameters), a face pipeline and a ROS 2 node.

Everything in this package except `agegender_ros.node` and `agegender_ros.ros_session` (they import rclpy) is
ROS-free.
"""
# After `colcon build`, rosidl installs the generated `agegender_ros.msg` into the install space while the
# rest of the package may be imported from a source checkout or a pip install: let Python look in every
# `agegender_ros` folder on sys.path so both halves are found.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"

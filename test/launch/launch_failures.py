"""Launch test (launch_testing, add_launch_test in CMakeLists.txt): bad input makes `ros2 launch agegender_ros
nano.launch.py` stop by itself with a clear error and a non-zero exit status -- it never hangs.

    launch_test test/launch/launch_failures.py          (in a sourced workspace, inside scripts/netns_run.sh)

Real `ros2 launch` runs, side by side:
* a params file with out-of-range / unknown values: the node exits with status 2 and its error listing every
  problem; the launch then stops with "agegender_node exited with status 2 (invalid parameters ...)" and exit 1;
* a launch argument the node rejects (weights:= a file that does not exist): the same, with the node's error;
* a launch argument the launch file rejects (camera_fps:=fast with camera:=v4l2): the launch stops before
  starting anything, naming the argument, exit 1;
* an unknown launch argument (detectr:=scrfd): refused with the closest known name, nothing started, exit 1;
* a node parameter given as a launch argument with a bad value (detector:=nonsense) and an image topic that is
  not a topic name (image_topics:="not a topic"): refused by the launch file, nothing started, exit 1;
* a params file that is not YAML: one line naming the file, the line and column (no traceback), exit 1.
The folder of the params files is removed when the test process ends.

File name: not test_*.py, so that the pytest suite in test/ does not collect it.
"""
import atexit
import functools
import os
import shutil
import sys
import tempfile
import unittest

import launch_testing
import launch_testing.actions
import launch_testing.markers
import pytest
from launch import LaunchDescription
from launch.actions import ExecuteProcess

# Hard limit for each `ros2 launch`: a hang fails the test instead of blocking CI.
LAUNCH_LIMIT_S = 90
BAD_PARAMS = """\
/**:
  ros__parameters:
    score_threshold: 1.5
    detector: yolo
    detector_input_size: 300
"""
NOT_YAML = """\
/**:
  ros__parameters:
    score_threshold: [0.5,
"""

CASES = {
    "bad_params_file": {
        "args": ["params_file:={params}"],
        "expect": ["invalid parameter(s) for agegender_node:",
                   "score_threshold: 1.5 is outside the allowed range 0.0..1.0",
                   "detector: 'yolo' is not one of auto, scrfd, blazeface, haar",
                   "exit code 2",
                   "agegender_node exited with status 2 (invalid parameters"],
    },
    "missing_weights": {
        "args": ["weights:=/nonexistent/agegender/model.pt", "backend:=onnxruntime"],
        "expect": ["weights: file '/nonexistent/agegender/model.pt' does not exist",
                   "agegender_node exited with status 2 (invalid parameters"],
    },
    "bad_launch_argument": {
        "args": ["camera:=v4l2", "camera_fps:=fast"],
        "expect": ["launch argument camera_fps: 'fast' is not a positive integer"],
        "absent": ["process started"],  # nothing was started
    },
    "unknown_launch_argument": {
        "args": ["detectr:=scrfd"],
        "expect": ["unknown launch argument 'detectr' (did you mean 'detector'?)"],
        "absent": ["process started"],
    },
    "bad_node_parameter_argument": {
        "args": ["detector:=nonsense", "image_topics:=not a topic"],
        "expect": ["launch argument image_topics: 'not a topic' is not a valid ROS topic name",
                   "launch argument detector: 'nonsense' is not one of auto, scrfd, blazeface, haar"],
        "absent": ["process started"],
    },
    "params_file_not_yaml": {
        "args": ["params_file:={not_yaml}"],
        "expect": ["is not valid YAML at line 4, column 1"],
        "absent": ["process started", "Traceback"],
    },
}


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description():
    ros2 = shutil.which("ros2")
    if ros2 is None:
        raise unittest.SkipTest("the `ros2` command (ros2launch) is not installed")
    folder = tempfile.mkdtemp(prefix="agegender-launch-test-")
    atexit.register(functools.partial(shutil.rmtree, folder, ignore_errors=True))
    params, not_yaml = os.path.join(folder, "bad.yaml"), os.path.join(folder, "not_yaml.yaml")
    for path, text in ((params, BAD_PARAMS), (not_yaml, NOT_YAML)):
        with open(path, "w") as f:
            f.write(text)
    processes = {}
    for name, case in CASES.items():
        args = [a.format(params=params, not_yaml=not_yaml) for a in case["args"]]
        processes[name] = ExecuteProcess(
            cmd=["timeout", "-s", "KILL", str(LAUNCH_LIMIT_S), sys.executable, ros2, "launch", "agegender_ros",
                 "nano.launch.py"] + args,
            name=name, output="screen", sigterm_timeout="5", sigkill_timeout="5")
    return LaunchDescription(list(processes.values()) + [launch_testing.actions.ReadyToTest()]), processes


class TestLaunchStops(unittest.TestCase):
    def test_every_launch_stops_by_itself(self, proc_info, bad_params_file, missing_weights, bad_launch_argument,
                                          unknown_launch_argument, bad_node_parameter_argument, params_file_not_yaml):
        for process in (bad_params_file, missing_weights, bad_launch_argument, unknown_launch_argument,
                        bad_node_parameter_argument, params_file_not_yaml):
            proc_info.assertWaitForShutdown(process=process, timeout=LAUNCH_LIMIT_S + 15)


@launch_testing.post_shutdown_test()
class TestLaunchReportsTheFailure(unittest.TestCase):
    def _check(self, proc_info, proc_output, process, name):
        case = CASES[name]
        text = "".join(io.text.decode(errors="replace") for io in proc_output[process])
        returncode = proc_info[process].returncode
        self.assertNotIn(returncode, (-9, 137), f"{name}: `ros2 launch` hung and was killed after "
                         f"{LAUNCH_LIMIT_S} s:\n{text}")
        self.assertEqual(returncode, 1, f"{name}: `ros2 launch` exited with {returncode}:\n{text}")
        for expected in case["expect"]:
            self.assertIn(expected, text, name)
        for unexpected in case.get("absent", []):
            self.assertNotIn(unexpected, text, name)

    def test_bad_params_file(self, proc_info, proc_output, bad_params_file):
        self._check(proc_info, proc_output, bad_params_file, "bad_params_file")

    def test_node_rejects_a_launch_argument(self, proc_info, proc_output, missing_weights):
        self._check(proc_info, proc_output, missing_weights, "missing_weights")

    def test_launch_file_rejects_a_launch_argument(self, proc_info, proc_output, bad_launch_argument):
        self._check(proc_info, proc_output, bad_launch_argument, "bad_launch_argument")

    def test_unknown_launch_argument(self, proc_info, proc_output, unknown_launch_argument):
        self._check(proc_info, proc_output, unknown_launch_argument, "unknown_launch_argument")

    def test_node_parameter_arguments_are_checked(self, proc_info, proc_output, bad_node_parameter_argument):
        self._check(proc_info, proc_output, bad_node_parameter_argument, "bad_node_parameter_argument")

    def test_params_file_that_is_not_yaml(self, proc_info, proc_output, params_file_not_yaml):
        self._check(proc_info, proc_output, params_file_not_yaml, "params_file_not_yaml")
        text = "".join(io.text.decode(errors="replace") for io in proc_output[params_file_not_yaml])
        self.assertEqual(len([ln for ln in text.splitlines() if "[ERROR]" in ln]), 1, text)

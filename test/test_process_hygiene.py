"""Process hygiene: what the package starts, it stops.

* `scripts/netns_run.sh CMD`: processes CMD leaves running in the private network namespace (the `ros2 daemon`
  that `ros2 topic list` starts, a node orphaned by a killed launch) are stopped when CMD ends; CMD's exit
  status is kept; SIGTERM reaches CMD.
* `ros2 launch agegender_ros nano.launch.py` killed with SIGTERM (it then exits 143 without stopping its
  children): agegender_node notices that its parent is gone and exits by itself.
* `python -m agegender_ros.node --ros-args --params-file NOT_YAML`: one line naming the file, line and column,
  exit status 2 (not rclpy's traceback).

Every child has a hard time limit; every wait is bounded.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ros_import

REPO = Path(__file__).resolve().parents[1]
NETNS_RUN = str(REPO / "scripts" / "netns_run.sh")

pytestmark = pytest.mark.timeout(180)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _netns_run(args, **kwargs):
    """scripts/netns_run.sh in a namespace of its own, even when this test already runs in one."""
    env = dict(os.environ)
    env.pop("AGEGENDER_NETNS", None)
    return subprocess.run(["timeout", "-s", "KILL", "60", NETNS_RUN] + args, env=env, capture_output=True,
                          text=True, timeout=70, **kwargs)


def _need_unshare():
    probe = _netns_run(["true"])
    if probe.returncode != 0:
        pytest.skip(f"no private network namespace here (unshare): {probe.stderr.strip()[-300:]}")


def test_netns_run_stops_what_the_command_left_running():
    _need_unshare()
    result = _netns_run(["bash", "-c", "sleep 300 & echo $!; exit 3"])
    assert result.returncode == 3, result.stderr  # the command's own status
    pid = int(result.stdout.split()[0])
    assert _wait_gone(pid, 10), f"the background `sleep` (pid {pid}) outlived netns_run.sh"


def test_netns_run_passes_sigterm_on():
    _need_unshare()
    env = dict(os.environ)
    env.pop("AGEGENDER_NETNS", None)
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); "
            "print('up', flush=True); time.sleep(60)")
    proc = subprocess.Popen([NETNS_RUN, sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_ros2_daemon_does_not_outlive_the_namespace():
    """`ros2 topic list` starts a `ros2 daemon` that would stay behind in the private namespace."""
    _need_unshare()
    if shutil.which("ros2") is None:
        pytest.skip("no `ros2` command (ros2cli): source scripts/ros_shell.sh")
    script = ("ros2 topic list > /dev/null; "
              "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q _ros2_daemon "
              "&& echo ${p#/proc/}; done; true")
    result = _netns_run(["bash", "-c", script])
    assert result.returncode == 0, result.stderr[-2000:]
    daemons = [int(pid) for pid in result.stdout.split()]
    assert daemons, f"`ros2 topic list` started no ros2 daemon here?\n{result.stdout}\n{result.stderr}"
    for pid in daemons:
        assert _wait_gone(pid, 10), f"ros2 daemon {pid} outlived netns_run.sh"


def _children(pid: int) -> list:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def test_node_exits_when_ros2_launch_is_killed(tmp_path, random_weights):
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    if shutil.which("ros2") is None:
        pytest.skip("no `ros2` command (ros2cli): source scripts/ros_shell.sh")
    ros_import("ament_index_python", "ament_index_python is not installed")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("agegender_ros")
    except PackageNotFoundError:
        pytest.skip("agegender_ros is not built and sourced (colcon build; source install/setup.bash)")
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        launch = subprocess.Popen(
            ["ros2", "launch", "agegender_ros", "nano.launch.py", "detector:=haar", "backend:=onnxruntime",
             f"weights:={random_weights}", "image_topics:=/hygiene/image_raw",
             "detections_topic:=/hygiene/detections"], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    node_pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "reading /hygiene/image_raw" not in log.read_text():
            assert launch.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert "reading /hygiene/image_raw" in log.read_text(), log.read_text()[-3000:]
        (node_pid,) = _children(launch.pid)
        launch.send_signal(signal.SIGTERM)
        assert launch.wait(timeout=20) != 0  # ros2 launch ends on SIGTERM without stopping its children ...
        assert _wait_gone(node_pid, 15), f"agegender_node (pid {node_pid}) outlived `ros2 launch`"  # ... ours ends
    finally:
        for pid in (launch.pid, node_pid):
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launch.wait(timeout=10)


def test_params_file_that_is_not_yaml_is_one_line(tmp_path):
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build` and "
                                    "`source install/setup.bash`")
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    score_threshold: [1,\n")
    result = subprocess.run(["timeout", "-s", "KILL", "60", sys.executable, "-m", "agegender_ros.node", "--ros-args",
                             "--params-file", str(bad)], capture_output=True, text=True, timeout=70, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"agegender_node: --params-file '{bad}' is not valid YAML at line 4, column 1: "
                                     "expected the node content, but found '<stream end>'"), result.stderr


def test_help_works_without_ros(tmp_path):
    """`python -m agegender_ros.node --help` in a Python without rclpy or the built messages."""
    blocker = tmp_path / "no_ros"
    blocker.mkdir()
    for name in ("rclpy",):
        (blocker / name).mkdir()
        (blocker / name / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{REPO}")
    result = subprocess.run([sys.executable, "-m", "agegender_ros.node", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "score_threshold (float, default 0.5) [0.0..1.0] live" in result.stdout
    assert "detector (str, default 'auto') [auto | scrfd | blazeface | haar] (set while unconfigured)" in result.stdout

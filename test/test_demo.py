"""`make demo` (agegender_ros/demo.py): the real `ros2 launch` + `ros2 topic echo` path, its fallback where the
`ros2` command is missing, and the ROS-free pieces (reading the echo's output, telling what is missing).

The demo runs need DDS, so only inside scripts/netns_run.sh (skipped with the reason elsewhere); test_node.py's
test_demo_runs_and_prints_echo_yaml checks the printed messages and the annotated frames in detail.
"""
from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agegender_ros import demo
from conftest import ros_import

REPO = Path(__file__).resolve().parents[1]

ECHO_OUTPUT = """\
header:
  stamp:
    sec: 1795859898
    nanosec: 538071310
  frame_id: astronaut
faces:
- roi:
    x_offset: 180
    y_offset: 64
    height: 115
    width: 93
    do_rectify: false
  score: 0.8693698644638062
  track_id: 1
---
A message was lost!!!
total count: 2
---
header:
  stamp:
    sec: 1795859899
    nanosec: 5
  frame_id: solvay_1927
faces: []
---
"""


def test_echo_reader_keeps_each_printed_message_by_stamp():
    reader = demo.EchoReader(io.StringIO(ECHO_OUTPUT))
    first = reader.wait((1795859898, 538071310), 5.0)
    assert first.startswith("header:\n  stamp:\n    sec: 1795859898\n") and first.rstrip().endswith("track_id: 1")
    assert "---" not in first
    assert reader.wait((1795859899, 5), 5.0).rstrip().endswith("faces: []")
    assert reader.wait((1, 2), 0.2) is None
    assert reader.other == ["A message was lost!!!\ntotal count: 2\n"]


def test_cut_note_reads_the_nodes_max_faces_line():
    line = ("[agegender_node-1] [INFO] [1.2] [agegender_node]: /camera/image_raw: 7 of 15 faces left out: max_faces "
            "is 8 (the most confident are kept; ...)")
    assert demo.cut_note("other lines\n" + line + "\n") == (
        "# max_faces (8, config/nano.yaml) left out 7 of the 15 faces found; `ros2 launch agegender_ros "
        "nano.launch.py max_faces:=32` reports them all (and a larger detector_input_size, e.g. 640, finds smaller "
        "faces too)")
    assert demo.cut_note("[agegender_node]: reading /camera/image_raw (Image)") is None


def test_missing_ros2_command_is_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "`ros2` command is not installed" in demo.ros2_tools_missing()


def _run_demo(tmp_path, *extra):
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build` and "
                                    "`source install/setup.bash`")
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    result = subprocess.run(["timeout", "-s", "KILL", "150", sys.executable, "-m", "agegender_ros.demo", "--out",
                             str(tmp_path / "out"), *extra], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=160)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut_annotated.jpg",
                                                                     "solvay_1927_annotated.jpg"]
    return result.stdout, result.stderr, time.monotonic() - started


def test_demo_uses_the_real_ros2_launch_and_topic_echo(tmp_path):
    missing = demo.ros2_tools_missing()
    if missing:
        pytest.skip(f"{missing}: the demo uses its fallback (test_demo_fallback_without_ros2_launch)")
    out, err, elapsed = _run_demo(tmp_path)
    assert "$ ros2 launch agegender_ros nano.launch.py publish_debug_image:=true\n" in out
    assert "[INFO] [agegender_node-1]: process started with pid" in out  # what ros2 launch printed
    assert "$ ros2 topic echo --no-daemon /agegender/detections agegender_ros/msg/AgeGenderArray\n" in out
    assert out.count("as `ros2 topic echo` printed it:\nheader:\n  stamp:\n    sec: ") == 2
    # The real echo prints float32 fields as Python floats (0.8693698644638062), as the fallback printer does.
    assert re.search(r"\n  score: 0\.\d{9,}\n", out), out[-2000:]
    assert "ros2 launch stopped (exit 0)" in out
    assert "falling back" not in err
    assert elapsed < 120
    # config/nano.yaml keeps 8 faces: the demo says so under the group photo, from the node's own log line.
    solvay = out[out.index("# solvay_1927.jpg"):]
    assert solvay.startswith("# solvay_1927.jpg (1600x1158): 8 face(s)") and solvay.count("\n- roi:\n") == 8
    assert re.search(r"\n# max_faces \(8, config/nano.yaml\) left out \d+ of the \d+ faces found; ", solvay), \
        solvay[-1500:]


def test_demo_fallback_without_ros2_launch(tmp_path):
    out, err, _ = _run_demo(tmp_path, "--no-launch")
    assert "--no-launch: the node runs inside this process" in out
    assert "$ ros2 launch" not in out
    assert out.count("header:\n  stamp:\n    sec: ") == 2
    assert "# astronaut.jpg (512x512): 1 face(s) on /agegender/detections\n" in out
    assert "left out" not in out  # the in-process node keeps its default max_faces (32)


def test_demo_names_an_unreadable_photo_and_goes_on(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(REPO / "agegender_ros" / "samples" / "astronaut.jpg", samples)
    (samples / "broken.jpg").write_bytes((REPO / "agegender_ros" / "samples" / "astronaut.jpg").read_bytes()[:300])
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("DDS test runs only in a private network namespace: use scripts/netns_run.sh")
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build`")
    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)), PYTHONUNBUFFERED="1")
    result = subprocess.run(["timeout", "-s", "KILL", "150", sys.executable, "-m", "agegender_ros.demo", "--no-launch",
                             "--samples", str(samples), "--out", str(tmp_path / "out")], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=160)
    assert result.returncode == 1  # not every sample photo was answered
    assert "# broken.jpg: skipped: " in result.stderr, result.stderr[-2000:]
    assert "# astronaut.jpg (512x512): 1 face(s) on /agegender/detections\n" in result.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["astronaut_annotated.jpg"]

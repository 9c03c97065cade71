"""Output samples in the docs cannot go stale (issue 31, part 7): docs/ros.md's `ros2 topic echo` sample is what the
node publishes for samples/astronaut.jpg with config/nano.yaml and the shipped weights (docs/echo_sample.py computes
it; `python docs/echo_sample.py --write` rewrites the block after new weights)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python docs/echo_sample.py --write"
# How far the documented numbers may be from today's: float noise between machines and ONNX Runtime versions,
# far below what new weights or another detector set-up change.
TOLERANCE = {"score": 0.01, "age": 0.3, "age_std": 0.2, "gender_confidence": 0.01, "p_male": 0.01}
ROI_TOLERANCE_PX = 2


@pytest.fixture(scope="module")
def echo_sample():
    spec = importlib.util.spec_from_file_location("echo_sample", REPO / "docs" / "echo_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def documented(echo_sample):
    yaml = pytest.importorskip("yaml", reason="pyyaml reads the documented block")
    block = echo_sample.documented_block(echo_sample.ROS_MD.read_text())
    return block, yaml.safe_load(block)


def test_the_echo_sample_is_what_the_shipped_weights_publish(echo_sample, documented):
    from agegender_ros.faces import DetectorUnavailable

    try:
        faces = echo_sample.published_faces()
    except DetectorUnavailable as error:  # config/nano.yaml's SCRFD
        pytest.skip(f"the node's detector is not available here: {error}")
    _, message = documented
    stale = f"docs/ros.md's echo sample is stale; run `{REGENERATE}`"
    assert message["header"]["frame_id"] == echo_sample.FRAME_ID
    assert len(message["faces"]) == len(faces), f"{stale} (it shows {len(message['faces'])} face(s), the node " \
                                                f"publishes {len(faces)})"
    for shown, now in zip(message["faces"], faces):
        roi = shown["roi"]
        shown_roi = (roi["x_offset"], roi["y_offset"], roi["width"], roi["height"])
        assert all(abs(a - b) <= ROI_TOLERANCE_PX for a, b in zip(shown_roi, now["roi"])), \
            f"{stale}: roi {shown_roi} against {now['roi']} (x, y, width, height)"
        for field, tolerance in TOLERANCE.items():
            assert shown[field] == pytest.approx(now[field], abs=tolerance), \
                f"{stale}: {field} {shown[field]} against {now[field]:.6g}"
        assert (shown["gender"], shown["track_id"]) == (now["gender"], now["track_id"]), stale


def test_the_block_is_laid_out_as_ros2_topic_echo_prints_it(echo_sample, documented):
    """The script prints the documented values back exactly (ros_echo's layout: field order, float32 values as the
    echo prints them), so the block is the script's output, not a hand-edited copy."""
    block, message = documented
    faces = [{**face, "roi": (face["roi"]["x_offset"], face["roi"]["y_offset"], face["roi"]["width"],
                              face["roi"]["height"])} for face in message["faces"]]
    stamp = (message["header"]["stamp"]["sec"], message["header"]["stamp"]["nanosec"])
    assert echo_sample.echo_yaml(faces, stamp, message["header"]["frame_id"]) == block

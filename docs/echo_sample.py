"""docs/ros.md's sample `ros2 topic echo /agegender/detections` output, computed instead of pasted.

    python docs/echo_sample.py            # print the block: what the node publishes for samples/astronaut.jpg
    python docs/echo_sample.py --write    # put it into docs/ros.md (after new default weights, a new detector, ...)

It runs the node's own pipeline without ROS: config/nano.yaml's detector settings (launch_args.detector_options,
as the node builds its detector), the network through ONNX Runtime with the package's default weights at their
card's crop scale, the node's tracker on a first frame, and the node's message fields (message_fields) printed in
`ros2 topic echo`'s layout (ros_echo.message_to_yaml, float32 fields as the echo prints them). So the block is what
`make demo` prints for that photo, apart from the header stamp, which is kept from the block already in the file.
test/test_doc_samples.py checks the block in docs/ros.md against this, with a small tolerance, so it cannot go stale.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROS_MD = REPO / "docs" / "ros.md"
PHOTO = REPO / "agegender_ros" / "samples" / "astronaut.jpg"
PARAMS = REPO / "config" / "nano.yaml"
FRAME_ID = PHOTO.stem  # the demo publishes each photo with its name as frame_id
# The block: the ```yaml fence right after the line that introduces it in docs/ros.md.
BLOCK = re.compile(r"(`ros2 topic echo /agegender/detections` prints, for example:\n\n```yaml\n)(.*?)(```\n)", re.S)
DEFAULT_STAMP = (1795959395, 844471522)


class _Message:
    """A stand-in for an rclpy message: `ros_echo.message_to_yaml` needs only get_fields_and_field_types()."""

    def __init__(self, fields: list):
        self._types = {name: ros_type for name, ros_type, _ in fields}
        for name, _, value in fields:
            setattr(self, name, value)

    def get_fields_and_field_types(self) -> dict:
        return dict(self._types)


def _float32(value: float) -> float:
    return float(np.float32(value))  # what a float32 field holds, printed as the echo prints it


def node_parameters() -> dict:
    import yaml

    return yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]


def published_faces(photo: Path = PHOTO, weights: str | None = None) -> list:
    """The AgeGender fields (message_fields.agegender_fields) the node with config/nano.yaml publishes for a photo."""
    from agegender_ros.backends import create_backend
    from agegender_ros.estimator import Estimator
    from agegender_ros.faces import DETECTORS, read_image
    from agegender_ros.launch_args import detector_options
    from agegender_ros.message_fields import agegender_fields
    from agegender_ros.tracking import FaceTracker
    from agegender_ros.weights import crop_scale, default_weights_path, read_card

    p = node_parameters()
    detector = DETECTORS[p["detector"]](**detector_options(p["detector"], p["detector_input_size"],
                                                           p["score_threshold"], p["num_threads"], p["min_face_size"]))
    backend = create_backend("onnxruntime", weights, threads=p["num_threads"])
    estimator = Estimator(detector, backend, max_faces=p["max_faces"], min_face_size=float(p["min_face_size"]),
                          crop_scale=crop_scale(read_card(weights or default_weights_path())))
    frame = read_image(photo)
    tracker = FaceTracker(p["track_iou_threshold"], p["smoothing"], p["track_max_missed"])
    height, width = frame.shape[:2]
    return [agegender_fields(face, width, height) for face in tracker.update(estimator(frame))]


def echo_yaml(faces: list, stamp: tuple = DEFAULT_STAMP, frame_id: str = FRAME_ID) -> str:
    """The AgeGenderArray as `ros2 topic echo` prints it (without the closing `---`)."""
    from agegender_ros.ros_echo import message_to_yaml

    header = _Message([("stamp", "builtin_interfaces/Time", _Message([("sec", "int32", stamp[0]),
                                                                       ("nanosec", "uint32", stamp[1])])),
                       ("frame_id", "string", frame_id)])
    items = []
    for f in faces:
        x, y, w, h = f["roi"]
        roi = _Message([("x_offset", "uint32", x), ("y_offset", "uint32", y), ("height", "uint32", h),
                        ("width", "uint32", w), ("do_rectify", "boolean", False)])
        items.append(_Message([("roi", "sensor_msgs/RegionOfInterest", roi),
                               ("score", "float", _float32(f["score"])), ("age", "float", _float32(f["age"])),
                               ("age_std", "float", _float32(f["age_std"])), ("gender", "uint8", f["gender"]),
                               ("gender_confidence", "float", _float32(f["gender_confidence"])),
                               ("p_male", "float", _float32(f["p_male"])), ("track_id", "uint32", f["track_id"])]))
    message = _Message([("header", "std_msgs/Header", header), ("faces", "sequence<agegender_ros/AgeGender>", items)])
    return message_to_yaml(message) + "\n"


def documented_block(text: str) -> str:
    match = BLOCK.search(text)
    if match is None:
        raise ValueError(f"{ROS_MD}: no ```yaml block after \"`ros2 topic echo /agegender/detections` prints, for "
                         "example:\"")
    return match.group(2)


def documented_stamp(block: str) -> tuple:
    match = re.search(r"stamp:\n\s+sec: (\d+)\n\s+nanosec: (\d+)", block)
    return (int(match.group(1)), int(match.group(2))) if match else DEFAULT_STAMP


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"replace the block in {ROS_MD.relative_to(REPO)}")
    parser.add_argument("--weights", help="model .pt with its card (default: the package's)")
    args = parser.parse_args(argv)
    text = ROS_MD.read_text()
    block = echo_yaml(published_faces(weights=args.weights), documented_stamp(documented_block(text)))
    if not args.write:
        print(block, end="")
        return 0
    new = BLOCK.sub(lambda m: m.group(1) + block + m.group(3), text, count=1)
    if new == text:
        print(f"{ROS_MD.relative_to(REPO)}: the echo sample is up to date")
    else:
        ROS_MD.write_text(new)
        print(f"{ROS_MD.relative_to(REPO)}: echo sample rewritten")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

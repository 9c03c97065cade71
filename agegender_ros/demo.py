"""`make demo`: the ROS 2 node on the bundled sample photos, end to end, printing what a robot would receive.

    scripts/netns_run.sh python -m agegender_ros.demo --out demo_out      (what `make demo` runs)

Starts agegender_node and a small publisher in one process (its own rclpy context and DDS domain, inside the
private network namespace that scripts/netns_run.sh provides), publishes each photo of agegender_ros/samples/
once as sensor_msgs/Image, prints every AgeGenderArray arriving on /agegender/detections the way
`ros2 topic echo` prints it, writes the annotated frames from /agegender/debug_image to --out, and exits.

This module is ROS-free glue: what touches rclpy lives in agegender_ros.ros_session and agegender_ros.node
(imported lazily).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"

HEADER = """\
agegender_ros demo -- the ROS 2 node on the bundled sample photos
  * starts agegender_node (detector {detector}, backend {backend}) with weights {weights}
  * publishes each photo in {samples}/ once as sensor_msgs/Image (bgr8) on /camera/image_raw
  * prints each agegender_ros/AgeGenderArray from /agegender/detections as `ros2 topic echo` does:
      header.stamp = the photo's stamp; per face: roi (box in pixels), score (detector), age (years),
      age_std (ensemble spread), gender (1 = female, 2 = male), gender_confidence, p_male, track_id
  * writes the annotated frames (/agegender/debug_image) to {out}/
All ROS 2 traffic stays inside this private network namespace (DDS domain {domain}).
"""


def untrained_weights() -> str:
    """Random-init weights (fixed seed), for a pipeline demo before the real weights are trained. Kept in the
    cache folder so that later runs reuse them (and their exported ONNX file)."""
    import torch

    from agegender_ros.backends import cache_dir
    from agegender_ros.model import create_model
    from agegender_ros.weights import WeightsError, load_model, save_weights

    path = cache_dir() / "demo" / "untrained_seed0.pt"
    try:
        load_model(path)
        return str(path)
    except WeightsError:
        pass
    torch.manual_seed(0)
    save_weights(create_model("paper"), path, {"architecture": "paper", "model_args": {},
                                               "training_data": "none: random initialisation (demo fallback)"})
    return str(path)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agegender_ros.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="folder for the annotated frames (default: demo_out)")
    parser.add_argument("--weights", help="model .pt with its .json card (default: the package's weights)")
    parser.add_argument("--samples", default=str(SAMPLES), help="folder of .jpg photos to publish")
    parser.add_argument("--detector", default="auto", help="face detector (auto | scrfd | blazeface | haar)")
    parser.add_argument("--backend", default="auto", help="network backend (auto | tensorrt | onnxruntime | torch)")
    parser.add_argument("--timeout", type=float, default=50.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if os.environ.get("AGEGENDER_NETNS") != "1":
        print("note: not inside scripts/netns_run.sh; DDS discovery is limited to localhost "
              "(ROS_AUTOMATIC_DISCOVERY_RANGE) and a private domain id is used", file=sys.stderr)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    # The one-off ONNX export of the weights (first run only) warns about tracing; not what the demo shows.
    warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    import cv2

    from agegender_ros.weights import default_weights_path

    photos = sorted(p for p in Path(args.samples).glob("*.jpg"))
    if not photos:
        print(f"error: no .jpg photos in {args.samples}", file=sys.stderr)
        return 2
    weights = args.weights
    untrained = False
    if not weights and not default_weights_path().is_file():
        untrained = True
        weights = untrained_weights()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from agegender_ros import ros_session as ros  # rclpy from here on
    from agegender_ros.ros_echo import message_to_yaml

    domain = ros.private_domain_id()
    print(HEADER.format(detector=args.detector, backend=args.backend, samples=Path(args.samples),
                        weights=weights or default_weights_path(), out=out_dir, domain=domain))
    if untrained:
        print(f"NOTE: no trained weights at {default_weights_path()} yet (`make weights` trains them): this run "
              "uses RANDOMLY INITIALISED weights, so the boxes are real but the ages and genders are "
              "meaningless.\n")
    sys.stdout.flush()

    written = []
    with ros.RosSession(domain_id=domain) as session:
        try:
            session.start_node({"weights": weights or "", "detector": args.detector, "backend": args.backend,
                                "publish_debug_image": True, "diagnostics_period_s": 0.0})
        except ros.StartupError as error:
            print(f"error: the node could not start: {error}", file=sys.stderr)
            return 1
        probe = session.probe(debug_image_topic="/agegender/debug_image", name="agegender_demo_publisher")
        if not probe.wait_ready(max(5.0, args.timeout - (time.monotonic() - started)), debug_image=True):
            print("error: the node and the demo publisher did not connect", file=sys.stderr)
            return 1
        for path in photos:
            frame = cv2.imread(str(path))
            if frame is None:
                print(f"# {path.name}: not readable, skipped", file=sys.stderr)
                continue
            remaining = args.timeout - (time.monotonic() - started)
            try:
                stamp, msg = probe.request(frame, "bgr8", frame_id=path.stem, timeout=max(5.0, remaining))
            except TimeoutError as error:
                print(f"error: {path.name}: {error}", file=sys.stderr)
                return 1
            print(f"# {path.name} ({frame.shape[1]}x{frame.shape[0]}): {len(msg.faces)} face(s) on "
                  "/agegender/detections")
            print(message_to_yaml(msg))
            print("---", flush=True)
            annotated = probe.wait_debug_image(stamp, 10.0)
            if annotated is not None:
                target = out_dir / f"{path.stem}_annotated.jpg"
                cv2.imwrite(str(target), annotated)
                written.append(target)
    print(f"wrote {len(written)} annotated frame(s) to {out_dir}/: " + ", ".join(p.name for p in written))
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0 if len(written) == len(photos) else 1


if __name__ == "__main__":
    sys.exit(main())

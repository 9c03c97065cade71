#!/usr/bin/env python3
"""End-to-end benchmark of agegender_node over real ROS 2 (not a test).

    scripts/netns_run.sh .venv/bin/python scripts/bench_node.py            (after colcon build + sourcing)
    scripts/netns_run.sh .venv/bin/python scripts/bench_node.py --json bench.json --seconds 10

The node runs as its own process (`python -m agegender_ros.node`), as on a robot. This process publishes
640x480 bgr8 sensor_msgs/Image frames with 1 and with 5 faces at a fixed input rate, stamped with the time of
publishing, and receives the AgeGenderArray replies. Reported per scene and input rate:
  * output frames/s: AgeGenderArray messages received per second (sustained, over --seconds);
  * latency p50 / p99: image stamp -> detections received here (the publish itself is a few hundred us earlier);
  * answered: the fraction of input frames processed (the node drops stale frames instead of queueing them).
An input rate above what the node can do measures its capacity; 30 Hz is a typical camera.

DDS transport (--transport): `default` is Fast DDS as installed; `large-shm` gives both processes a Fast DDS
profile with a 16 MB shared-memory segment (the XML below). A 640x480 bgr8 frame (921,600 bytes) does not fit
Fast DDS's default shared-memory segment, so by default it travels as ~15 UDP fragments through loopback, and
under CPU load fragments (hence whole best-effort frames) are lost before the node sees them.

Runs inside a private network namespace (re-executes itself through scripts/netns_run.sh when needed) and
uses its own DDS domain. Weights: --weights, else the package's default, else fixed random-init weights (speed
does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Fast DDS profile: shared memory with a 16 MB segment (room for several raw HD frames) + UDP for the rest.
LARGE_SHM_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>shm_large_segment</transport_id>
      <type>SHM</type>
      <segment_size>16777216</segment_size>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>udp</transport_id>
      <type>UDPv4</type>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="agegender_large_shm" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>shm_large_segment</transport_id>
        <transport_id>udp</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def _scene(n_faces: int):
    """A 640x480 frame with n faces (the astronaut's head, scaled) on a grey background."""
    import cv2
    import numpy as np

    photo = cv2.imread(str(REPO / "agegender_ros" / "samples" / "astronaut.jpg"))
    frame = np.full((480, 640, 3), 100, np.uint8)
    if n_faces == 1:
        frame[:, 64:576] = photo[16:496]
        return frame
    head = photo[20:240, 120:330]  # 210 x 220, face and hair
    head = cv2.resize(head, (150, 157), interpolation=cv2.INTER_AREA)
    positions = [(40, 40), (245, 40), (450, 40), (140, 270), (350, 270)][:n_faces]
    for x, y in positions:
        frame[y:y + head.shape[0], x:x + head.shape[1]] = head
    return frame


def _percentile(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def run(args, transport: str) -> dict:
    """One node process and one publishing/receiving session with this DDS transport; every scene and rate."""
    for name in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        os.environ.pop(name, None)
    if transport == "large-shm":
        profile = Path(tempfile.mkdtemp(prefix="agegender-bench-")) / "fastdds_large_shm.xml"
        profile.write_text(LARGE_SHM_PROFILE)
        # Read when the first DDS participant of a process is created (Fast DDS 2.x / 3.x names).
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)

    from agegender_ros import ros_session as ros
    from agegender_ros.ros_image import encode_frame
    from agegender_ros.weights import default_weights_path

    weights = args.weights
    if not weights:
        if default_weights_path().is_file():
            weights = str(default_weights_path())
        else:  # speed does not depend on the weights' values
            from agegender_ros.demo import untrained_weights

            weights = untrained_weights()
    domain = ros.private_domain_id()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "agegender_ros.node", "--ros-args", "-p", f"weights:={weights}",
               "-p", f"backend:={args.backend}", "-p", f"detector:={args.detector}",
               "-p", f"detector_input_size:={args.input_size}", "-p", f"num_threads:={args.threads}",
               "-p", "diagnostics_period_s:=0.0", "-p", "publish_vision_msgs:=false",
               "-p", "image_topics:=['/bench/image_raw']", "-p", "detections_topic:=/bench/detections"]
    node_log = tempfile.NamedTemporaryFile("w+", prefix="bench-node-", suffix=".log", delete=False)
    proc = subprocess.Popen(["timeout", "-s", "KILL", str(int(args.seconds * 8 + 120))] + command, env=env,
                            stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True)
    results = {"transport": transport, "node_command": " ".join(command[1:]),
               "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version(),
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
               "weights": weights, "scenes": []}
    try:
        with ros.RosSession(domain_id=domain) as session:
            probe = session.probe(image_topic="/bench/image_raw", detections_topic="/bench/detections",
                                  name="agegender_bench", reliable=False)
            if not probe.wait_ready(60.0):
                raise RuntimeError("the node did not come up; its log: " + Path(node_log.name).read_text()[-3000:])
            for n_faces in args.faces:
                frame = _scene(n_faces)
                message = ros.image_message(encode_frame(frame, "bgr8"))
                # Warm-up (also checks the scene): a few answered frames.
                faces_seen = []
                for _ in range(5):
                    try:
                        faces_seen.append(len(probe.request(frame, "bgr8", timeout=15)[1].faces))
                    except TimeoutError:
                        pass
                for rate in args.rates:
                    first_arrival = len(probe.arrivals)
                    sent = []
                    period = 1.0 / rate
                    start = time.monotonic()
                    i = 0
                    while time.monotonic() - start < args.seconds:
                        message.header = probe.header("bench")
                        probe.image_pub.publish(message)
                        sent.append(message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec)
                        i += 1
                        time.sleep(max(0.0, start + i * period - time.monotonic()))
                    duration = time.monotonic() - start
                    time.sleep(1.0)  # the last replies
                    sent_set = set(sent)
                    arrivals = [a for a in probe.arrivals[first_arrival:] if a[0] in sent_set]
                    latencies = [(arrived - stamp) / 1e6 for stamp, arrived, _ in arrivals]
                    in_window = [a for a in arrivals if a[0] <= sent[-1]]
                    scene = {
                        "transport": transport, "faces_in_frame": n_faces, "faces_detected": sorted(set(faces_seen)),
                        "input_rate_hz": rate, "input_frames": len(sent),
                        "input_rate_achieved_hz": round(len(sent) / duration, 1),
                        "output_fps": round(len(in_window) / duration, 1),
                        "answered_fraction": round(len(arrivals) / len(sent), 3),
                        "latency_ms_p50": round(_percentile(latencies, 50), 1),
                        "latency_ms_p99": round(_percentile(latencies, 99), 1),
                        "latency_ms_max": round(max(latencies), 1) if latencies else None,
                    }
                    results["scenes"].append(scene)
                    print(json.dumps(scene), flush=True)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_text = Path(node_log.name).read_text()
        results["node_log"] = [line for line in log_text.splitlines() if "] [agegender_node]:" in line][:3]
        os.unlink(node_log.name)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5], help="faces per frame (1..5)")
    parser.add_argument("--rates", type=float, nargs="+", default=[60.0, 30.0], help="input frame rates (Hz)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per scene and rate")
    parser.add_argument("--weights", help="weights .pt (default: the package's, else random-init)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--detector", default="scrfd")
    parser.add_argument("--input-size", type=int, default=320, help="detector_input_size")
    parser.add_argument("--threads", type=int, default=1, help="num_threads of the node")
    parser.add_argument("--transport", choices=["default", "large-shm", "both"], default="both",
                        help="DDS transport set-up (see the top of this file)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if os.environ.get("AGEGENDER_NETNS") != "1":  # DDS only inside a private network namespace
        netns = REPO / "scripts" / "netns_run.sh"
        os.execv("/bin/bash", ["bash", str(netns), sys.executable] + sys.argv)
    runs = []
    if args.transport == "both":
        # One process per transport: Fast DDS reads its profile file once per process.
        for transport in ("default", "large-shm"):
            with tempfile.NamedTemporaryFile(suffix=".json") as part:
                argv = [a for a in sys.argv[1:]]
                for option in ("--json", "--transport"):
                    if option in argv:
                        i = argv.index(option)
                        del argv[i:i + 2]
                subprocess.run([sys.executable, __file__] + argv + ["--transport", transport, "--json", part.name],
                               check=True)
                runs += json.loads(Path(part.name).read_text())["runs"]
    else:
        runs.append(run(args, args.transport))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "scenes"}, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["scripts/bench_node.py"] + sys.argv[1:]),
                                               "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

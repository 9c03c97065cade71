#!/usr/bin/env python3
"""End-to-end benchmark of agegender_node over real ROS 2 (not a test).

    scripts/netns_run.sh .venv/bin/python scripts/bench_node.py            (after colcon build + sourcing)
    scripts/netns_run.sh .venv/bin/python scripts/bench_node.py --via launch --faces 1 --rates 30 --seconds 30
    scripts/netns_run.sh .venv/bin/python scripts/bench_node.py --via launch --soak 600 --json soak.json

The node runs as its own process, as on a robot: started with the real `ros2 launch agegender_ros
nano.launch.py` (--via launch, the default where `ros2` is installed) or as `python -m agegender_ros.node`
(--via process). This process publishes 640x480 bgr8 sensor_msgs/Image frames with 1 and with 5 faces at a fixed
input rate, stamped with the time of publishing, and receives the AgeGenderArray replies. Reported per scene
and input rate:
  * output frames/s: AgeGenderArray messages received per second (sustained, over --seconds);
  * latency p50 / p99: image stamp -> detections received here (the publish itself is a few hundred us earlier);
  * answered: the fraction of input frames processed (the node drops stale frames instead of queueing them).
An input rate above what the node can do measures its capacity; 30 Hz is a typical camera.

--via external: no node is started; the frames go to the node already running (started in another shell, e.g.
`ros2 launch agegender_ros nano.launch.py max_rate_hz:=0`) on --image-topic, the answers are read from
--detections-topic, in this shell's ROS_DOMAIN_ID. With --transport inherit this process keeps the DDS set-up of
the shell it was started from (`source scripts/ros_shell.sh` exports the package's profile): the measurement of a
camera publisher "started in a second shell set up as README says".

--soak S: instead, S seconds of one scene (--faces, first --rates) without pause, reported per minute:
output frames/s, answered, latency p50 / p99, the node's resident memory (VmRSS), and whether it is still alive.

Node parameters: SCRFD at --input-size, --threads, no rate cap, no debug image, no vision_msgs, no diagnostics
(with --via launch: a params file with these values, `params_file:=`, `image_topics:=/bench/image_raw`).

DDS transport of this (publishing) process, --transport: `large-shm` = the package's Fast DDS profile
(config/fastdds_large_shm.xml: 16 MB shared-memory segment + UDP), i.e. what nano.launch.py gives the processes
it starts, as a camera driver started by the launch file would have it; `default` = Fast DDS as installed, as a
publisher outside the launch without the profile. The node gets: with --via launch, what the launch file sets
(--dds-profile, default auto = the same profile); with --via process, the same as this process. A 640x480 bgr8
frame (921,600 bytes) does not fit Fast DDS's default shared-memory segment, so without the profile it travels
as ~15 UDP fragments through loopback, and under CPU load fragments (hence whole best-effort frames) are lost
before the node sees them.

Runs inside a private network namespace (re-executes itself through scripts/netns_run.sh when needed) and
uses its own DDS domain. Weights: --weights, else the package's default, else fixed random-init weights (speed
does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_shm.xml"  # the file nano.launch.py sets (installed copy: the same)
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


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


def _node_parameters(args, weights: str) -> dict:
    return {"weights": weights, "backend": args.backend, "detector": args.detector,
            "detector_input_size": args.input_size, "num_threads": args.threads, "max_rate_hz": 0.0,
            "diagnostics_period_s": 0.0, "publish_vision_msgs": False, "publish_debug_image": False,
            "image_topics": ["/bench/image_raw"], "detections_topic": "/bench/detections"}


def _node_command(args, weights: str, workdir: Path) -> tuple:
    """(command, description) starting the node the way --via asks."""
    params = _node_parameters(args, weights)
    if args.via == "launch":
        params_file = workdir / "bench_params.yaml"
        params_file.write_text("/**:\n  ros__parameters:\n" + "".join(
            f"    {name}: {json.dumps(value)}\n" for name, value in params.items()))
        command = ["ros2", "launch", "agegender_ros", "nano.launch.py", f"params_file:={params_file}",
                   "image_topics:=/bench/image_raw", f"dds_profile:={args.dds_profile}"]
        return command, " ".join(command) + "   # " + ", ".join(f"{k}: {v}" for k, v in params.items())
    command = [sys.executable, "-m", "agegender_ros.node", "--ros-args"]
    for name, value in params.items():
        command += ["-p", f"{name}:={json.dumps(value) if isinstance(value, list) else value}"]
    return command, " ".join(command[1:])


def _node_pid(root_pid: int):
    """The pid of the agegender_node process under root_pid (itself with --via process, the launch's child with
    --via launch), or None."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for proc in [psutil.Process(root_pid)] + psutil.Process(root_pid).children(recursive=True):
            cmdline = " ".join(proc.cmdline())
            if ("agegender_node" in cmdline or "agegender_ros.node" in cmdline) and "--ros-args" in cmdline \
                    and "launch" not in proc.cmdline()[1:3]:
                return proc.pid
    except psutil.Error:
        return None
    return None


def _rss_mb(pid):
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _stop(proc) -> None:
    """Ctrl-C for the node / the launch (as in a terminal), then SIGKILL for the whole group."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]) if children else proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError, OSError, ValueError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _stream(probe, message, rate: float, seconds: float, on_tick=None) -> tuple:
    """Publish `message` at `rate` for `seconds` (fresh stamp each); returns (stamps sent, duration)."""
    sent = []
    period = 1.0 / rate
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        message.header = probe.header("bench")
        probe.image_pub.publish(message)
        sent.append(message.header.stamp.sec * 1_000_000_000 + message.header.stamp.nanosec)
        i += 1
        if on_tick is not None:
            on_tick(i)
        time.sleep(max(0.0, start + i * period - time.monotonic()))
    return sent, time.monotonic() - start


def _stats(probe, sent: list, duration: float, first_arrival: int) -> dict:
    sent_set = set(sent)
    arrivals = [a for a in probe.arrivals[first_arrival:] if a[0] in sent_set]
    latencies = [(arrived - stamp) / 1e6 for stamp, arrived, _ in arrivals]
    in_window = [a for a in arrivals if a[0] <= sent[-1]]
    return {
        "input_frames": len(sent), "input_rate_achieved_hz": round(len(sent) / duration, 1),
        "output_fps": round(len(in_window) / duration, 1),
        "answered_fraction": round(len(arrivals) / len(sent), 3),
        "latency_ms_p50": round(_percentile(latencies, 50), 1),
        "latency_ms_p99": round(_percentile(latencies, 99), 1),
        "latency_ms_max": round(max(latencies), 1) if latencies else None,
    }


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _measure(args, probe, transport: str, results: dict, soak_run=None) -> None:
    """Per scene (--faces): a warm-up of a few answered frames, then a stream at each --rates for --seconds, one
    row each in results["scenes"]; with soak_run(message, faces, faces seen), the soak of the first scene."""
    from agegender_ros.ros_image import encode_frame
    from agegender_ros.ros_session import image_message

    for n_faces in args.faces:
        frame = _scene(n_faces)
        message = image_message(encode_frame(frame, "bgr8"))
        faces_seen = []  # the warm-up also checks the scene
        for _ in range(5):
            try:
                faces_seen.append(len(probe.request(frame, "bgr8", timeout=15)[1].faces))
            except TimeoutError:
                pass
        if soak_run is not None:
            results["soak"] = soak_run(message, n_faces, sorted(set(faces_seen)))
            return
        for rate in args.rates:
            first_arrival = len(probe.arrivals)
            sent, duration = _stream(probe, message, rate, args.seconds)
            time.sleep(1.0)  # the last replies
            scene = {"transport": transport, "faces_in_frame": n_faces, "faces_detected": sorted(set(faces_seen)),
                     "input_rate_hz": rate, **_stats(probe, sent, duration, first_arrival)}
            results["scenes"].append(scene)
            print(json.dumps(scene), flush=True)


def run(args, transport: str) -> dict:
    """One node (process or launch) and one publishing/receiving session with this DDS transport."""
    if args.via == "external":
        return run_external(args, transport)
    for name in PROFILE_VARIABLES:
        os.environ.pop(name, None)
    node_env = dict(os.environ)  # --via launch: the launch file decides the node's transport
    if transport == "large-shm":
        # Read when the first DDS participant of a process is created (Fast DDS 2.x / 3.x names).
        os.environ.update({name: str(PROFILE) for name in PROFILE_VARIABLES})
        if args.via == "process":
            node_env = dict(os.environ)

    from agegender_ros import ros_session as ros
    from agegender_ros.weights import default_weights_path

    weights = args.weights
    if not weights:
        if default_weights_path().is_file():
            weights = str(default_weights_path())
        else:  # speed does not depend on the weights' values
            from agegender_ros.demo import untrained_weights

            weights = untrained_weights()
    domain = ros.private_domain_id()
    node_env.update(ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    workdir = Path(tempfile.mkdtemp(prefix="agegender-bench-"))
    command, description = _node_command(args, weights, workdir)
    total_s = args.soak if args.soak else args.seconds * len(args.rates) * len(args.faces)
    node_log = workdir / "node.log"
    with open(node_log, "w") as log:
        proc = subprocess.Popen(["timeout", "-s", "KILL", str(int(total_s * 1.5 + 180))] + command, env=node_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results = {"via": args.via, "transport": transport, "node_command": description, "machine": _machine(),
               "weights": weights, "scenes": []}
    if args.via == "launch":
        results["dds_profile"] = args.dds_profile
    try:
        with ros.RosSession(domain_id=domain) as session:
            probe = session.probe(image_topic="/bench/image_raw", detections_topic="/bench/detections",
                                  name="agegender_bench", reliable=False)
            if not probe.wait_ready(120.0):
                raise RuntimeError("the node did not come up; its log: " + node_log.read_text()[-3000:])
            node_pid = _node_pid(proc.pid)
            if args.via == "launch" and node_pid is not None:
                environ = Path(f"/proc/{node_pid}/environ").read_bytes().decode(errors="replace").split("\0")
                results["node_dds_profile"] = next((e.split("=", 1)[1] for e in environ
                                                    if e.startswith(PROFILE_VARIABLES[0] + "=")), None)
            _measure(args, probe, transport, results,
                     (lambda message, n, seen: soak(args, probe, message, proc, node_pid, n, seen)) if args.soak
                     else None)
    finally:
        results["node_alive_at_end"] = proc.poll() is None
        _stop(proc)
        log_text = node_log.read_text()
        results["node_log"] = [line for line in log_text.splitlines() if "] [agegender_node]:" in line][:3]
        results["node_died"] = [line for line in log_text.splitlines() if "process has died" in line]
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def run_external(args, transport: str) -> dict:
    """--via external: frames to the node another shell started; this process's DDS set-up as --transport says
    (inherit: as the shell has it)."""
    if transport != "inherit":
        for name in PROFILE_VARIABLES:
            os.environ.pop(name, None)
        if transport == "large-shm":
            os.environ.update({name: str(PROFILE) for name in PROFILE_VARIABLES})
    from agegender_ros import ros_session as ros

    domain = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
    results = {"via": "external", "transport": transport, "publisher_dds_profile":
               os.environ.get(PROFILE_VARIABLES[0]), "image_topic": args.image_topic,
               "detections_topic": args.detections_topic, "ros_domain_id": domain, "machine": _machine(),
               "scenes": []}
    with ros.RosSession(domain_id=domain) as session:
        probe = session.probe(image_topic=args.image_topic, detections_topic=args.detections_topic,
                              name="camera_publisher", reliable=False)
        if not probe.wait_ready(120.0):
            raise RuntimeError(f"no node subscribes to {args.image_topic} and publishes {args.detections_topic} "
                               f"in ROS_DOMAIN_ID {domain}")
        _measure(args, probe, transport, results)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def soak(args, probe, message, proc, node_pid, n_faces: int, faces_detected: list) -> dict:
    """--soak seconds at the first rate, one row per minute (the last one possibly shorter)."""
    rate = args.rates[0]
    minutes = []
    start = time.monotonic()
    while time.monotonic() - start < args.soak - 1:
        first_arrival = len(probe.arrivals)
        seconds = min(60.0, args.soak - (time.monotonic() - start))
        sent, duration = _stream(probe, message, rate, seconds)
        row = {"minute": len(minutes) + 1, "seconds": round(duration, 1), **_stats(probe, sent, duration,
                                                                                 first_arrival),
               "node_rss_mb": _rss_mb(node_pid), "node_alive": proc.poll() is None}
        minutes.append(row)
        print(json.dumps(row), flush=True)
        if proc.poll() is not None:
            break
    time.sleep(1.0)
    rss = [m["node_rss_mb"] for m in minutes if m["node_rss_mb"]]
    p99 = [m["latency_ms_p99"] for m in minutes]
    summary = {
        "faces_in_frame": n_faces, "faces_detected": faces_detected, "input_rate_hz": rate,
        "duration_s": round(time.monotonic() - start, 1), "minutes": minutes,
        "node_alive_at_end": proc.poll() is None,
        "rss_mb_after_minute_1": rss[0] if rss else None, "rss_mb_max": max(rss) if rss else None,
        "rss_mb_end": rss[-1] if rss else None,
        "rss_growth_after_minute_1_pct": round(100.0 * (max(rss[1:] or rss) - rss[0]) / rss[0], 2) if rss else None,
        "latency_ms_p99_first_3_min": round(sum(p99[:3]) / len(p99[:3]), 1) if p99 else None,
        "latency_ms_p99_last_3_min": round(sum(p99[-3:]) / len(p99[-3:]), 1) if p99 else None,
        "output_fps_mean": round(sum(m["output_fps"] for m in minutes) / len(minutes), 1) if minutes else None,
        "answered_mean": round(sum(m["answered_fraction"] for m in minutes) / len(minutes), 3) if minutes else None,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "minutes"}), flush=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5], help="faces per frame (1..5)")
    parser.add_argument("--rates", type=float, nargs="+", default=[60.0, 30.0], help="input frame rates (Hz)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per scene and rate")
    parser.add_argument("--soak", type=float, default=0.0, help="soak test: this many seconds of the first scene "
                        "and rate, reported per minute (0 = off)")
    parser.add_argument("--via", choices=["launch", "process", "external"], default=None,
                        help="start the node with `ros2 launch agegender_ros nano.launch.py` (default where the "
                             "`ros2` command exists) or as `python -m agegender_ros.node`; external: use the node "
                             "running already (started in another shell)")
    parser.add_argument("--image-topic", default="/camera/image_raw", help="--via external: the node's input")
    parser.add_argument("--detections-topic", default="/agegender/detections", help="--via external: its output")
    parser.add_argument("--dds-profile", default="auto", help="--via launch: the launch's dds_profile argument")
    parser.add_argument("--weights", help="weights .pt (default: the package's, else random-init)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--detector", default="scrfd")
    parser.add_argument("--input-size", type=int, default=320, help="detector_input_size")
    parser.add_argument("--threads", type=int, default=1, help="num_threads of the node")
    parser.add_argument("--transport", choices=["default", "large-shm", "both", "inherit"], default=None,
                        help="DDS transport of the publisher (see the top of this file; default: both, with "
                             "--via external inherit)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.transport is None:
        args.transport = "inherit" if args.via == "external" else "both"
    if args.transport == "inherit" and args.via != "external":
        parser.error("--transport inherit is for --via external")
    if args.via is None:
        args.via = "launch" if shutil.which("ros2") else "process"
    if args.via == "launch" and not shutil.which("ros2"):
        parser.error("--via launch needs the `ros2` command (source scripts/ros_shell.sh)")
    if os.environ.get("AGEGENDER_NETNS") != "1":  # DDS only inside a private network namespace
        netns = REPO / "scripts" / "netns_run.sh"
        os.execv("/bin/bash", ["bash", str(netns), sys.executable] + sys.argv)
    runs = []
    if args.transport == "both":
        # One process per transport: Fast DDS reads its profile file once per process.
        for transport in ("default", "large-shm"):
            with tempfile.NamedTemporaryFile(suffix=".json") as part:
                argv = [a for a in sys.argv[1:]]
                for option in ("--json", "--transport", "--via"):
                    if option in argv:
                        i = argv.index(option)
                        del argv[i:i + 2]
                subprocess.run([sys.executable, __file__] + argv + ["--via", args.via, "--transport", transport,
                                                                    "--json", part.name], check=True)
                runs += json.loads(Path(part.name).read_text())["runs"]
    else:
        runs.append(run(args, args.transport))
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("scenes", "soak")}, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["scripts/bench_node.py"] + sys.argv[1:]),
                                               "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

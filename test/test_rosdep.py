"""package.xml's run-time keys against setup.py's install_requires, and every package.xml key through rosdep.

An integrator installs this package's dependencies with `rosdep install --from-paths src --ignore-src -y`, which
reads package.xml only; `pip install .` reads setup.py only. The first tests keep the two lists together; the last
resolves every key of package.xml with rosdep itself (PyPI `rosdep`, offline) against the rosdistro files in
../shared/rosdistro, on Jazzy (Ubuntu 24.04) and Humble (Ubuntu 22.04).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import REPO, RUNTIME_ONLY

# Each pip requirement of setup.py's install_requires (by its normalised name) -> the rosdep key that installs it.
PIP_TO_ROSDEP = {
    "numpy": "python3-numpy",
    "opencv-python-headless": "python3-opencv",  # Debian's python3-opencv provides the same cv2
    "onnxruntime": "python3-onnxruntime-pip",  # no Debian/Ubuntu package: rosdep installs the wheel with pip
}
# Pip requirements rosdep has no key for -> why. Each must be named in a package.xml comment and, with its pip
# line, in docs/ros.md ("Install in a ROS 2 workspace"). None today.
PIP_WITHOUT_KEY: dict[str, str] = {}
# System (non-ROS) keys package.xml declares for the ROS side only, which `pip install .` does not need -> why.
ROS_SIDE_ONLY_KEYS = {
    "python3-yaml": "the launch file reads params files; every ROS 2 install has PyYAML (launch needs it)",
}
RUNTIME_DEPENDS = ("depend", "exec_depend", "run_depend")
# REP 144: a ROS package name is lower case letters, digits and underscores. Any other key is a system key.
ROS_PACKAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

SHARED_ROSDISTRO = REPO.parent / "shared" / "rosdistro"
# The platforms each distribution targets (REP 2000): what `rosdep install` resolves for there.
DISTRIBUTIONS = {"jazzy": "ubuntu:noble", "humble": "ubuntu:jammy"}


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def install_requires() -> list[str]:
    """setup.py's install_requires, read from its source (running setup.py would build the package)."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    return ast.literal_eval(keyword.value)
    raise AssertionError("setup.py: no setup(install_requires=[...]) literal found")


def required_names() -> set[str]:
    from packaging.requirements import Requirement

    return {normalised(Requirement(line).name) for line in install_requires()}


def package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def runtime_keys() -> set[str]:
    return {element.text.strip() for tag in RUNTIME_DEPENDS for element in package_xml().iter(tag)}


def package_xml_comments() -> str:
    """The text of package.xml's comments (ElementTree drops them)."""
    return " ".join(re.findall(r"<!--(.*?)-->", (REPO / "package.xml").read_text(encoding="utf-8"), re.S))


def test_every_pip_requirement_has_a_rosdep_key_or_says_why_not():
    unmapped = required_names() - set(PIP_TO_ROSDEP) - set(PIP_WITHOUT_KEY)
    assert not unmapped, (
        f"setup.py's install_requires names {sorted(unmapped)}, which test_rosdep.py does not map: add each to "
        "PIP_TO_ROSDEP with its rosdep key (../shared/rosdistro/rosdep/*.yaml) and declare the key in package.xml, "
        "or to PIP_WITHOUT_KEY")
    stale = (set(PIP_TO_ROSDEP) | set(PIP_WITHOUT_KEY)) - required_names()
    assert not stale, f"test_rosdep.py maps {sorted(stale)}, which setup.py's install_requires no longer names"


def test_package_xml_declares_the_key_of_every_pip_requirement():
    keys = runtime_keys()
    missing = {name: key for name, key in PIP_TO_ROSDEP.items() if key not in keys}
    assert not missing, f"package.xml lacks <exec_depend> for these install_requires (pip name: key): {missing}"


def test_package_xml_declares_no_system_key_that_setup_py_lacks():
    system_keys = {key for key in runtime_keys() if not ROS_PACKAGE_NAME.match(key)}
    unexplained = system_keys - set(PIP_TO_ROSDEP.values()) - set(ROS_SIDE_ONLY_KEYS)
    assert not unexplained, (
        f"package.xml declares the run-time keys {sorted(unexplained)}, which match no install_requires of "
        "setup.py: add the requirement there, or list the key in ROS_SIDE_ONLY_KEYS with the reason")


def test_docs_table_lists_each_requirement_with_its_key():
    docs = (REPO / "docs" / "ros.md").read_text(encoding="utf-8")
    section = docs.split("## Install in a ROS 2 workspace", 1)[-1].split("\n## ", 1)[0]
    for name, key in PIP_TO_ROSDEP.items():
        assert f"| `{name}` | `{key}` |" in section, f"docs/ros.md, Install in a ROS 2 workspace: no row for {name}"


def test_a_requirement_without_key_is_documented_with_its_pip_line():
    docs = (REPO / "docs" / "ros.md").read_text(encoding="utf-8")
    for name in PIP_WITHOUT_KEY:
        assert name in package_xml_comments(), f"package.xml: say in a comment that {name} has no rosdep key"
        assert re.search(rf"pip3? install [^\n]*\b{re.escape(name)}\b", docs), \
            f"docs/ros.md: give the pip line for {name} (no rosdep key)"


def rosdep(args: list[str], env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rosdep2", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def offline_rosdep_env(tmp_path_factory):
    """rosdep's environment with ../shared/rosdistro as its only source: a sources.list.d of `yaml file://` lines
    and a file:// rosdistro index, its cache in a temporary ROS_HOME. Nothing is fetched over the network."""
    if not SHARED_ROSDISTRO.is_dir():
        pytest.skip(f"{SHARED_ROSDISTRO} not present (the rosdistro files live in ../shared beside the repo)")
    if RUNTIME_ONLY:
        pytest.importorskip("rosdep2", reason="runtime-only install (pip install .): no rosdep")
    else:
        import rosdep2  # noqa: F401  (requirements.txt installs it: missing is an error, not a skip)
    base = tmp_path_factory.mktemp("rosdep")
    sources = base / "sources.list.d"
    sources.mkdir()
    (sources / "10-shared-rosdistro.list").write_text(
        "".join(f"yaml {(SHARED_ROSDISTRO / 'rosdep' / name).as_uri()}\n" for name in ("base.yaml", "python.yaml")))
    # package.xml alone in a folder: `rosdep keys --from-paths` must not crawl the checkout's venv and build trees.
    package = base / "src" / "agegender_ros"
    package.mkdir(parents=True)
    shutil.copy(REPO / "package.xml", package / "package.xml")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ROS_", "ROSDEP_", "ROSDISTRO_"))}
    env.update(ROSDEP_SOURCE_PATH=str(sources), ROSDISTRO_INDEX_URL=(SHARED_ROSDISTRO / "index-v4.yaml").as_uri(),
               ROS_PYTHON_VERSION="3")
    return base, env


@pytest.mark.parametrize("distro", sorted(DISTRIBUTIONS))
def test_every_package_xml_key_resolves(offline_rosdep_env, distro):
    base, env = offline_rosdep_env
    # One ROS_HOME per distribution: `rosdep update --rosdistro X` keeps only X's ROS packages in the cache.
    env = dict(env, ROS_HOME=str(base / f"home-{distro}"), ROS_DISTRO=distro)
    update = rosdep(["update", "--rosdistro", distro], env)
    assert update.returncode == 0, f"rosdep update failed:\n{update.stdout}\n{update.stderr}"
    assert f'Add distro "{distro}"' in update.stdout, update.stdout
    keys = rosdep(["keys", "--from-paths", str(base / "src"), "--rosdistro", distro], env)
    assert keys.returncode == 0, f"rosdep keys failed:\n{keys.stdout}\n{keys.stderr}"
    declared = sorted(set(keys.stdout.split()))
    # rosdep's list against the XML: rosdep reads every dependency tag (build, test, run).
    assert runtime_keys() <= set(declared), (runtime_keys() - set(declared), declared)
    resolved = rosdep(["resolve", "--rosdistro", distro, f"--os={DISTRIBUTIONS[distro]}", *declared], env)
    unresolved = re.findall(r"no rosdep rule for '([^']+)'", resolved.stderr)
    assert resolved.returncode == 0 and not unresolved, (
        f"on {distro} ({DISTRIBUTIONS[distro]}) rosdep resolves no rule for {unresolved}:\n{resolved.stderr}")
    # ONNX Runtime comes through pip (no Ubuntu package); a ROS package through the distribution's apt packages.
    blocks = dict(re.findall(r"#ROSDEP\[([^\]]+)\]\n#(\w+)", resolved.stdout))
    assert blocks.get("python3-onnxruntime-pip") == "pip", resolved.stdout
    assert blocks.get("rclpy") == "apt" and f"ros-{distro}-rclpy" in resolved.stdout, resolved.stdout

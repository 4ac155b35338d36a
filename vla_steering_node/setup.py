"""ament_python build of vla_steering_node (colcon); its executables are in setup.cfg (the pip path: ../setup.py)."""

from setuptools import setup

package_name = "vla_steering_node"

setup(
    name=package_name,
    version="0.1.0",
    packages=["vla_steering", "vla_steering.policies", "vla_steering_node"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/config", ["config/demo_vla_dictionary.yaml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla-steer maintainers",
    maintainer_email="maintainers@vla-steer.dev",
    description="ROS 2 node running a steered VLA policy, and the ROS-free steering core.",
    license="Apache-2.0",
)

"""ament_python build of sim_bridge (colcon); its executables are in setup.cfg (the pip path: ../setup.py)."""

from setuptools import setup

package_name = "sim_bridge"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla-steer maintainers",
    maintainer_email="maintainers@vla-steer.dev",
    description="sim_bridge for vla-steer.",
    license="Apache-2.0",
)

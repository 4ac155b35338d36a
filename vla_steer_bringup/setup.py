"""ament_python build of vla_steer_bringup (colcon); its executables are in setup.cfg (the pip path: ../setup.py)."""

from glob import glob

from setuptools import setup

package_name = "vla_steer_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="vla-steer maintainers",
    maintainer_email="maintainers@vla-steer.dev",
    description="System bringup of vla-steer: launch files, their parameters, the headless evaluation runner.",
    license="Apache-2.0",
)

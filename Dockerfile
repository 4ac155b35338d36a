# vla-steer on a ROS 2 Jazzy distro: the Python dependencies in a virtual environment that
# sees the distro's rclpy and messages, and the three packages built with colcon.
#   docker build -t vla-steer .                                  # CPU torch
#   docker build -t vla-steer --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm vla-steer                                    # the headless demo (scripts/demo.sh)
FROM ros:jazzy-ros-base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-venv python3-pip python3-colcon-common-extensions \
        ros-jazzy-sensor-msgs ros-jazzy-geometry-msgs ros-jazzy-trajectory-msgs \
        ros-jazzy-diagnostic-msgs ros-jazzy-std-srvs \
        libegl1 libgl1 libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vla-steer
RUN python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
RUN pip install --no-cache-dir torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}

COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

COPY . .
RUN . /opt/ros/jazzy/setup.sh \
    && cd ros2_ws && colcon build --symlink-install \
    && . install/setup.sh && python3 -m vla_steering.cli prepare

ENV MUJOCO_GL=egl
CMD ["bash", "-c", ". /opt/ros/jazzy/setup.sh && . ros2_ws/install/setup.sh && scripts/demo.sh --no-setup"]

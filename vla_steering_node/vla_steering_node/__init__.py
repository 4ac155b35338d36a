"""ROS 2 node running a steered VLA policy (rclpy); the science lives in vla_steering."""

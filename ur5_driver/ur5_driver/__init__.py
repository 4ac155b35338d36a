"""UR5 driver over RTDE for the vla-steer topic contract."""

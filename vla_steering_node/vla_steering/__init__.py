"""vla_steering: the ROS-free core of vla-steer.

Value-vector projection, concept search and clustering, intervention
dictionaries and live steering hooks for Hugging Face decoders; no rclpy here.
"""

__version__ = "0.1.0"

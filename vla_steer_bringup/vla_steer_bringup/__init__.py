"""System bringup: what the launch files start (bringup), and the headless evaluation runner."""

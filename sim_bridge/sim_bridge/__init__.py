"""LIBERO simulation bridge for the vla-steer topic contract."""

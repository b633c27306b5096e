"""Small utilities with no model: atomic writes (`atomic`)."""

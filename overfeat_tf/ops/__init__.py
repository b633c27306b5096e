"""Tensor operations on boxes and images with no model: box geometry (`boxes`), the image
pyramid (`pyramid`) and the box merge (`merge`)."""

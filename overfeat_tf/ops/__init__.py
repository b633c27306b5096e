"""Tensor operations with no model: box geometry (`boxes`), the bounded resize (`resizing`),
the image pyramid (`pyramid`) and the box merge (`merge`)."""

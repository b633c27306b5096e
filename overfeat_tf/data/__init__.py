"""Data: image decoding and resizing (`image_io`), TFDS access (`tfds_io`), datasets read
from files (`files`: a COCO JSON, a Pascal VOC folder, class folders; wherever a TFDS name
is taken), training inputs (`inputs`: crops; `spatial`: the detection and localization
targets) and the generated `overfeat_shapes` dataset (`shapes`; importing it registers the
builder with TFDS)."""

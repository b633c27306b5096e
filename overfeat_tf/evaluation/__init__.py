"""Evaluation: multi-scale classification (`classification`, paper Table 2), detection and
localization (`detection`) and their metrics (`metrics`: AP by pycocotools, ILSVRC
localization error). `python -m overfeat_tf.evaluation` runs the classification table."""

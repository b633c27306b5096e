"""The networks and the detector: architectures as data (`config`, `topology`), the layers,
the `OverFeat` backbone, running it over a pyramid (`inference`), network outputs -> boxes
(`detection`), the prediction decoders, the `OverFeatDetector` and its training losses
(`losses`); FLOP counts."""

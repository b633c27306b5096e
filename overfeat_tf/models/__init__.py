"""The networks and the detector: architectures as data (`config`, `topology`), the layers,
the `OverFeat` backbone, running it over a pyramid (`inference`), network outputs -> boxes
(`detection`), the prediction decoders and the `OverFeatDetector`; FLOP counts."""

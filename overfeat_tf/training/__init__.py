"""Training: a run's settings (`config`), its recipe, the spatial tasks (`tasks`),
callbacks, distribution, the compute precision by hardware, and the run (`run.train`)."""

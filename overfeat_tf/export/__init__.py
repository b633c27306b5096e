"""Export for TF Serving (`serving`): the SavedModel with every signature, written atomically."""

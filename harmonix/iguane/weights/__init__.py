"""Ready-made generator weights: the official Keras weights and the shipped demo model."""

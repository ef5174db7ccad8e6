"""IGUANe training: settings and recipes, the loop, its updates, sampling, augmentation,
validation, checkpoints and several processes."""

"""Front end: preprocessing, augmentation, features and the Ray Data training pipeline."""

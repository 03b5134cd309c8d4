"""Data: scanning, validation, splits, preprocessing, loaders and the dataset catalog."""

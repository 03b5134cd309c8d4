"""Data: scanning, validation, splits, preprocessing, loaders and the dataset catalog."""

from torchkiln.data import catalog, movie_reviews  # noqa: F401  (registers the catalog's entries)

"""Image classification: image folders, CSV manifests or catalog images -> one of K classes."""

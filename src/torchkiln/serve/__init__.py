"""Serving: the model server, its registry, prediction log and deployment files."""

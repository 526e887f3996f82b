"""Datasets, image IO and transforms."""

"""Datasets: safe ingest, image checks, caption formats, aspect buckets and the dataset doctor."""

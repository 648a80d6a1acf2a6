"""Datasets: COCO keypoint ingestion, the synthetic dataset, manifests, crops and augmentation."""

"""Annotations and training data: formats, splits, COCO, datasets, mappers, augmentation, samplers."""

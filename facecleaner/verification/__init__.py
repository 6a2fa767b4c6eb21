"""Face verification on pair lists: readers for the common pair formats, the metrics (pure numpy), the
embedding of each distinct image with flip test-time augmentation, and the ROC figure."""

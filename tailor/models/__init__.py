"""Models: the text encoder and its tuning, the sequential recommender, baselines, index, bundle."""

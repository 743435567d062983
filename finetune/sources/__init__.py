"""Sources: HTTP downloads and images from URL lists (pretrained weights
are :mod:`finetune.weights`'s)."""

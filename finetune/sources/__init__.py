"""Sources: HTTP downloads, pretrained weights, images from URL lists."""

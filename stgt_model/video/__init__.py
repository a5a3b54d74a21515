"""Video decoding, probing and frame sampling."""

"""What training and serving share: text normalization, the label schema, the model-bundle
metadata and customer-context features. Pure code: no I/O at import, no web or training code."""

"""Training loops ("recipes"), one file per method; models and losses are in mindpipe.models."""

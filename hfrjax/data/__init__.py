"""Data: synthetic faces, TFRecord shards, datasets and protocols, the grain input pipeline."""

"""The resumable loader: per-corpus streams (shuffle, transform, batch), resharding, the
DataLoader per corpus, the mixer across corpora, and the collate."""

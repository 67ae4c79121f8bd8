"""The resumable loader: per-corpus streams (shuffle, transform, batch with the kind's collate),
resharding, the DataLoader per corpus, and the mixer across corpora."""

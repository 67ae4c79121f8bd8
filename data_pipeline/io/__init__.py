"""Reading shards: shard lists (patterns, folders, URLs) and the one tar reader every caller uses."""

"""framestats: per-frame statistics of an image stack (the ncaas test analysis)."""

"""Tools built on the engine: figures, the search index over your own images, the efficiency profile."""

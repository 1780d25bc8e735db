"""Writers that put each region's part of the world into its source system (one per kind)."""

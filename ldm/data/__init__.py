"""CT slices: intensity convention, degradation, datasets, sample data and conversion."""

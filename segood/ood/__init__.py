"""OOD pieces: outlier synthesis (Feature Mixing), training losses and per-point anomaly scores."""

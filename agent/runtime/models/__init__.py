"""Models the worker trains: each one an ordered list of layer units (the grain of
pipeline stages, rebalancing and CheckFree). The built-in decoder is `decoder`."""

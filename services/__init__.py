"""Long-running FLEAD services: thin shells over the `flead` core library."""

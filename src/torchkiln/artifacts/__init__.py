"""What training leaves and everything after it consumes: the bundle, the predictor, the runtimes."""

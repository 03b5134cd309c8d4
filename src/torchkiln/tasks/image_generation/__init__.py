"""Image generation: a DCGAN that draws new images like its training set, and neural style transfer."""

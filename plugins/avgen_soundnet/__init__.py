"""SoundNet-8, its perceptual loss and Frechet distance (issue 6)."""

"""Audio representations: STFT magnitude and cochleagram (issue 4)."""

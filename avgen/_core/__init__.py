"""The private implementation of avgen: import names from ``avgen`` itself."""

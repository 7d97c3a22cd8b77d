"""What every other package may import: settings from the environment, model files on disk, the score cache."""

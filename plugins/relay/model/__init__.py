"""The ETA model: preprocessing saved with the weights, and the network."""

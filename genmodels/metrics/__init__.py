"""Metrics of trained generative models: sample quality, mode coverage, likelihoods."""

"""Federated training with missing modalities: sites, strategies and the round driver."""

"""Fakes that stand in for services that cannot run here, at the network boundary."""

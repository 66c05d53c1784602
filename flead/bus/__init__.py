"""Kafka access: client factories built from settings, topic administration."""

"""Embedded local services for development and tests (Tansu Kafka broker, SecantusDB)."""

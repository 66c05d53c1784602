"""The notifier: follows ``collection_events`` and delivers webhook notifications (see service.py)."""

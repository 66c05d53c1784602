"""``python -m services.global_api``: serve the API on the host and port of ``FLEAD_API_URL``."""

from services.global_api.server import serve

if __name__ == "__main__":
    serve()

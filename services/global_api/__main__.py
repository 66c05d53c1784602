"""``python -m services.global_api``: serve the API on the host and port of ``FLEAD_API_URL``."""

from flead.config import load_settings_or_exit
from services.global_api.server import serve

if __name__ == "__main__":
    serve(load_settings_or_exit())

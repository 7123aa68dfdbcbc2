"""The HTTP feature server (``feature-store serve``): FastAPI under uvicorn, over a FeatureStore."""

from feature_store.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]

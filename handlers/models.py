"""GET /models and /v1/models: the model list in the OpenAI shape."""

from __future__ import annotations

from config import Settings
from handlers.cross_site import CorsMixin
from services.chat.models import ModelCatalog


class ModelsHandler(CorsMixin):
    """Lists what the upstream serves (cached) and the names MODEL_MAP accepts, else the configured names."""

    def initialize(self, settings: Settings, catalog: ModelCatalog) -> None:
        self.server_api_key = settings.server_api_key
        self.catalog = catalog
        self.cors_methods = "GET"
        self.allow_origins(settings)

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "OPTIONS":  # a browser's preflight never carries the key
            self.check_bearer()

    async def get(self) -> None:
        models = await self.catalog.models()
        self.write_json(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "iss-llm"} for model in models],
            }
        )

"""GET /models and /v1/models: the model list in the OpenAI shape."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler
from services.models import ModelCatalog


class ModelsHandler(ApiHandler):
    """Lists what the upstream serves (cached) and the names MODEL_MAP accepts, else the configured names."""

    def initialize(self, services: Any) -> None:
        self.config = services.settings
        self.server_api_key = services.settings.server_api_key
        self.catalog: ModelCatalog = services.models or ModelCatalog(services.settings, None)

    def prepare(self) -> None:
        super().prepare()
        self.check_bearer()

    async def get(self) -> None:
        models = await self.catalog.models()
        self.write_json(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "iss-llm"} for model in models],
            }
        )


def routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"services": services}
    return [(r"/models", ModelsHandler, args), (r"/v1/models", ModelsHandler, args)]

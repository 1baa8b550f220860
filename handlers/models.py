"""GET /models and /v1/models: the model list in the OpenAI shape."""

from __future__ import annotations

from handlers.base import ApiHandler
from services.chat.models import ModelCatalog
from services.common.api_keys import ApiKeys


class ModelsHandler(ApiHandler):
    """Lists what the upstream serves (cached) and the names MODEL_MAP accepts, else the configured names."""

    def initialize(self, keys: ApiKeys, catalog: ModelCatalog) -> None:
        self.keys = keys
        self.catalog = catalog

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

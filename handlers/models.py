"""GET /models and /v1/models: the model list in the OpenAI shape."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler


class ModelsHandler(ApiHandler):
    """Lists the model this layer answers as (LLM_MODEL, else the default)."""

    def initialize(self, services: Any) -> None:
        self.config = services.settings
        self.server_api_key = services.settings.server_api_key

    def prepare(self) -> None:
        super().prepare()
        self.check_bearer()

    def get(self) -> None:
        model = self.config.llm_model or self.config.default_model
        self.write_json(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "iss-llm"}],
            }
        )


def routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"services": services}
    return [(r"/models", ModelsHandler, args), (r"/v1/models", ModelsHandler, args)]

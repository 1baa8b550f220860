"""An OpenTelemetry collector's stand-in for the benchmarks: takes POST /v1/traces, counts, drops.

    python -m bench.otlp_sink --port 0     # prints http://127.0.0.1:PORT once listening

The spans are decoded (what a collector does first) and counted; GET /stats answers
{"posts": N, "spans": M}, so a benchmark can tell that tracing really ran. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_BODY = 64 * 1024 * 1024


async def serve(port: int) -> None:
    counts = {"posts": 0, "spans": 0}

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        counts["posts"] += 1
        counts["spans"] += sum(len(scope.spans) for resource in message.resource_spans
                               for scope in resource.scope_spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"http://127.0.0.1:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The API's composition root: ``create_app(settings)`` wires settings, the connection
pool, the clock, routers and error mapping."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Callable

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from ispstream import __version__
from ispstream.settings import Settings
from portal_api import radius_replies
from portal_api.db import ConnectionPool, DatabaseUnavailable
from portal_api.publisher import KafkaPublisher, PublishError, Publisher
from portal_api.radius_replies import RadiusReplies
from portal_api.routers import enforcement, health, radius, sessions, subscribers
from portal_api.routers import alertmanager, stream, telemetry
from portal_api.services import NotFound, QueryError

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def create_app(settings: Settings, *, clock: Callable[[], datetime] | None = None,
               pool: ConnectionPool | None = None, publisher: Publisher | None = None,
               replies: RadiusReplies | None = None) -> FastAPI:
    """Build the FastAPI app (OpenAPI at ``/docs``).

    ``clock`` (aware UTC instants), ``pool``, ``publisher`` (Kafka, when
    ``kafka_bootstrap`` is set) and ``replies`` (the RADIUS attribute mapping) default to
    the real ones; tests may pass their own. Pool and publisher are closed when the app
    shuts down.
    """
    pool = pool or ConnectionPool(settings.api_dsn())
    replies = replies or radius_replies.load()
    if publisher is None:
        publisher = (KafkaPublisher(settings.kafka_bootstrap, settings.kafka_config,
                                    delivery_timeout_ms=settings.kafka_delivery_timeout_ms)
                     if settings.kafka_bootstrap else Publisher())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        publisher.close()
        pool.close()

    app = FastAPI(
        title="ispstream API",
        version=__version__,
        description="Usage, billing cycles, sessions and enforcement of an ISP's "
                    "subscribers, and RADIUS authorization for FreeRADIUS. "
                    "Authenticate with `Authorization: Bearer <API key>`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.clock = clock or _utc_now
    app.state.publisher = publisher
    app.state.radius_replies = replies

    app.include_router(health.router)
    app.include_router(subscribers.router)
    app.include_router(sessions.router)
    app.include_router(enforcement.router)
    app.include_router(radius.router)
    app.include_router(telemetry.router)
    app.include_router(stream.router)
    app.include_router(alertmanager.router)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"type": "value_error", "loc": ["query", exc.param],
                         "msg": exc.message}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(PublishError)
    async def _kafka_down(request: Request, exc: PublishError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    return app

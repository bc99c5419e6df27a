"""The FastAPI application: health, metrics, the OpenAPI document, and the ``/v1`` routers.

:func:`create_app` builds it for one data directory. Routers written elsewhere (the approval
endpoints) come in through ``extra_routers``, built with :func:`agent.service.deps.v1_router`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from agent import __version__
from agent.errors import KmsAgentError, VaultNotFound
from agent.service import errors, wallets_api, withdrawals_api
from agent.service.deps import COMMON_ERRORS, Authorized, Context, ServiceContext, run_sync
from agent.service.limits import Admission, BodyLimit
from agent.service.models import Health

if TYPE_CHECKING:
    from agent.withdrawals.holding import ShareHolder

DESCRIPTION = """\
The local API of kms-agent (docs/api.md). On the Unix socket (`$KMS_AGENT_HOME/agent.sock`, 0600)
no token is needed; on loopback TCP every route but `/health` needs `Authorization: Bearer <token>`
(the token is in `$KMS_AGENT_HOME/state/api-token`). Errors are `{"error": {"code", "message"}}`.
"""


def create_app(
    home: Path,
    *,
    require_token: str | None,
    extra_routers: Sequence[APIRouter] = (),
    admission: Admission | None = None,
) -> FastAPI:
    """The API for the data directory ``home``.

    :param require_token: the bearer token clients connecting over TCP must send; None when no
        listener needs one. Connections the server marks as Unix-socket ones never need it.
    :param extra_routers: more routers to include (build them with ``deps.v1_router``).
    :param admission: the bound on waiting state-changing requests (default: 2 running, 256 waiting).
    """
    app = FastAPI(
        title="kms-agent",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token like everything but /health
    )
    app.state.kms = ServiceContext(Path(home), require_token, admission or Admission())
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(errors.CatchAll)  # added last: the outermost
    app.include_router(_root_router(app))
    app.include_router(withdrawals_api.router)
    app.include_router(wallets_api.router)
    for router in extra_routers:
        # Whatever the router declares, it is behind the token on TCP like every /v1 route.
        app.include_router(router, dependencies=[Authorized], responses=COMMON_ERRORS)
    return app


def _root_router(app: FastAPI) -> APIRouter:
    router = APIRouter(tags=["agent"])

    @router.get("/health", response_model=Health)
    async def health(ctx: Context) -> Health:
        """Liveness, without a token: the agent answers, and whether its vault loads."""
        vault = await run_sync(_vault_state, ctx)
        return Health(status="ok" if vault == "ok" else "degraded", vault=vault)

    @router.get(
        "/metrics",
        dependencies=[Authorized],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def metrics(ctx: Context) -> Response:
        body, content_type = await run_sync(render_metrics, ctx.home)
        return Response(body, media_type=content_type)

    @router.get("/openapi.json", dependencies=[Authorized], include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(app.openapi())

    return router


def _vault_state(ctx: ServiceContext) -> Literal["ok", "not-found", "unusable"]:
    try:
        ctx.withdrawals.vault()
    except VaultNotFound:
        return "not-found"
    except KmsAgentError:
        return "unusable"
    return "ok"


def render_metrics(home: Path) -> tuple[bytes, str]:
    """The Prometheus exposition: ``agent.service.metrics.render_metrics(home)`` when that module exists,
    else prometheus_client's default registry. The one place the API reads metrics from."""
    if importlib.util.find_spec("agent.service.metrics") is not None:
        module = importlib.import_module("agent.service.metrics")
        render = cast(Callable[[Path], tuple[bytes, str]], module.render_metrics)
        return render(home)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(), CONTENT_TYPE_LATEST


def default_routers(holder: ShareHolder | None = None) -> list[APIRouter]:
    """The routers ``kms-agent serve`` adds to :func:`create_app`'s own: the approval endpoints, over
    the agent's share holder (docs/threat-model.md, "Shares held by the running agent")."""
    from agent.service.approvals_api import approvals_router
    from agent.withdrawals.holding import ShareHolder

    return [approvals_router(holder if holder is not None else ShareHolder())]


def openapi_document() -> dict[str, Any]:
    """The schema ``kms-agent serve`` serves at ``/openapi.json`` (committed as docs/openapi.json)."""
    return create_app(Path("/nonexistent"), require_token=None, extra_routers=default_routers()).openapi()


if __name__ == "__main__":  # python -m agent.service.app > docs/openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2))

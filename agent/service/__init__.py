"""The long-running agent: ``kms-agent serve``, a local HTTP API for applications (docs/api.md).

Nothing here is imported by the one-shot commands: FastAPI, pydantic and uvicorn load only when the
agent serves (``kms-agent --help`` stays fast). The modules:

* ``app``: :func:`~agent.service.app.create_app`, the FastAPI application and its routers;
* ``deps``: what every router shares (the service context, the bearer-token check, admission,
  running the synchronous withdrawal service in a worker thread), for routers from other modules;
* ``errors``: kms-agent errors and HTTP problems as one JSON shape, ``{"error": {"code", "message"}}``;
* ``limits``: the request-body limit (before parsing) and the bound on waiting writers;
* ``models``: the pydantic request and response models (the OpenAPI schema is generated from them);
* ``idempotency``: ``Idempotency-Key`` -> request id, durable in ``state/idempotency.sqlite``;
* ``cancel``: a withdrawal cancelled by its initiator, recorded as a decision row;
* ``server``: the listeners (Unix socket 0600, loopback TCP with a bearer token) under uvicorn.
"""

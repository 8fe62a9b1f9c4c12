"""The HTTP gateway: browsers and HTTP clients in front of the three gRPC services.

Built on aiohttp.web — the one HTTP library of this project for server, client
and tests (the twilio library's async client already uses it).

    python -m gateway [--port 8080] [--host 127.0.0.1]

Routes come from the services' `google.api.http` annotations (gateway.transcoding);
refusals become HTTP in one place (gateway.errors); events arrive as Server-Sent
Events (gateway.events); browsers log in for a session cookie (gateway.sessions);
Twilio's webhooks are verified and forwarded (gateway.webhooks); the original API
is kept (gateway.legacy); /openapi.json describes it all (gateway.openapi).
Configuration: gateway.config.
"""

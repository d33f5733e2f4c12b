"""The web edge: HTTP API, WebSockets, browser client and demo pages (aiohttp)."""

"""The HTTP API's one typed source (schema.py) and the OpenAPI document made from it (openapi.py).
Imports pydantic only: no Ray, torch or Starlette, so the client can use the same types."""

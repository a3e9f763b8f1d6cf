"""The OpenAPI description of the encrypted-inference server (:mod:`autofhe.fhe.serve`)."""

from __future__ import annotations

__all__ = ["openapi"]


def openapi(info: dict) -> dict:
    """The OpenAPI 3 description of ``autofhe serve`` (``GET /openapi.json``); ``info`` is
    the model metadata of ``GET /info``."""
    octet = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    error = {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "autofhe encrypted inference", "version": info.get("autofhe", "?")},
        "paths": {
            "/info": {
                "get": {
                    "summary": "Model metadata",
                    "responses": {
                        "200": {
                            "description": "task, features, versions",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/keys": {
                "post": {
                    "summary": "Register serialized evaluation keys",
                    "requestBody": {"required": True, "content": octet},
                    "responses": {
                        "200": {
                            "description": "registered",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"key_id": {"type": "string"}},
                                    }
                                }
                            },
                        },
                        "400": {"description": "malformed keys", "content": error},
                        "413": {"description": "too large", "content": error},
                    },
                }
            },
            "/predict/{key_id}": {
                "post": {
                    "summary": "Run one serialized encrypted input",
                    "parameters": [
                        {
                            "name": "key_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {"required": True, "content": octet},
                    "responses": {
                        "200": {"description": "serialized encrypted output", "content": octet},
                        "400": {"description": "malformed input", "content": error},
                        "404": {"description": "unknown key_id", "content": error},
                        "413": {"description": "too large", "content": error},
                    },
                }
            },
        },
    }

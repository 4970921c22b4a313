"""The Chalice app: blueprints, the admin Lambda function, nothing else."""

from __future__ import annotations

import logging

from chalice import Chalice

from chalicelib import admin
from chalicelib.dialects import service

app = Chalice(app_name="keyfront")
app.log.setLevel(logging.INFO)
app.register_blueprint(service.bp)


@app.lambda_function(name="admin")
def admin_function(event: dict, context: object) -> dict:
    """Admin events (create-token, revoke-token, list-tokens, health); see chalicelib/admin.py."""
    return admin.handle(event)

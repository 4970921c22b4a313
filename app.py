"""The Chalice app: blueprints, the admin Lambda function, nothing else."""

from __future__ import annotations

import logging

from chalice import Chalice

from chalicelib import admin
from chalicelib.dialects import service
from chalicelib.dialects.aivault import bp as aivault_bp
from chalicelib.dialects.auth0 import bp as auth0_bp
from chalicelib.dialects.miarec import bp as miarec_bp
from chalicelib.dialects.storedsafe import bp as storedsafe_bp

app = Chalice(app_name="keyfront")
app.log.setLevel(logging.INFO)
app.register_blueprint(service.bp)
app.register_blueprint(auth0_bp)
app.register_blueprint(storedsafe_bp)
app.register_blueprint(miarec_bp)
app.register_blueprint(aivault_bp)


@app.lambda_function(name="admin")
def admin_function(event: dict, context: object) -> dict:
    """Admin events (create-token, revoke-token, list-tokens, health); see chalicelib/admin.py."""
    return admin.handle(event)

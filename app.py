"""The Chalice app: blueprints, the admin Lambda function, nothing else."""

from __future__ import annotations

from chalice import Chalice, Rate

from chalicelib import admin, logs, maintenance
from chalicelib.dialects import service
from chalicelib.dialects.aivault import bp as aivault_bp
from chalicelib.dialects.apinizer import bp as apinizer_bp
from chalicelib.dialects.auth0 import bp as auth0_bp
from chalicelib.dialects.miarec import bp as miarec_bp
from chalicelib.dialects.storedsafe import bp as storedsafe_bp

# Chalice's own log handler ("keyfront - INFO - ...") is replaced by chalicelib/logs.py's
# JSON lines.
app = Chalice(app_name="keyfront", configure_logs=False)
app.register_middleware(logs.http_middleware(app), "http")
app.register_blueprint(service.bp)
app.register_blueprint(auth0_bp)
app.register_blueprint(storedsafe_bp)
app.register_blueprint(miarec_bp)
app.register_blueprint(apinizer_bp)
app.register_blueprint(aivault_bp)


@app.lambda_function(name="admin")
def admin_function(event: dict, context: object) -> dict:
    """Admin events (create-token, revoke-token, list-tokens, health); see chalicelib/admin.py.
    A result that is not ok raises, so the invocation reports a FunctionError."""
    return admin.invoke(event, context=context)


@app.schedule(Rate(1, unit=Rate.HOURS), name="maintenance")
def maintenance_function(event: object, context: object) -> dict:
    """Scheduled upkeep (chalicelib/maintenance.py); a failed step fails the invocation."""
    return maintenance.invoke(context)

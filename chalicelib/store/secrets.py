"""Read a secret from AWS Secrets Manager (in prod: the HSM PIN).

Lives in the store package because it is the only package allowed to import boto3.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from chalicelib.errors import Unavailable
from chalicelib.store.dynamodb_store import aws_errors, make_client


def read_secret(arn: str, region: str, endpoint_url: str | None = None) -> str:
    """The SecretString of secret `arn` (a binary secret is decoded as UTF-8).

    Any failure (missing secret, no permission, unreachable endpoint) raises Unavailable;
    the message never contains the secret.
    """
    client = make_client("secretsmanager", region, endpoint_url)
    with aws_errors("the secret store"):
        try:
            resp = client.get_secret_value(SecretId=arn)
        except ClientError as e:
            # Every Secrets Manager error means we cannot start: no PIN, no HSM.
            code = e.response.get("Error", {}).get("Code", "")
            raise Unavailable("the secret cannot be read", aws_error=code) from e
    value = resp.get("SecretString")
    if value is None and resp.get("SecretBinary") is not None:
        try:
            value = bytes(resp["SecretBinary"]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Unavailable("the secret is not text") from e
    if value is None:
        raise Unavailable("the secret has no value")
    return value

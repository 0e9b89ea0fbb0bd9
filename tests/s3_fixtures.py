"""S3 over real HTTP for tests: one moto server per session, a fresh bucket per test.

Load with ``pytest_plugins = ["s3_fixtures"]``. Fake AWS credentials are set for the
session and no AWS config file is read, so nothing can reach real AWS. boto3, moto and
prefect-aws are imported by the fixtures that use them, not by the xdist controller.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials, S3Bucket

AWS_REGION = "us-east-1"
AWS_ACCESS_KEY_ID = "testing"
AWS_SECRET_ACCESS_KEY = "testing"

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": AWS_REGION,
    "AWS_REGION": AWS_REGION,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def fake_aws_env() -> Iterator[None]:
    """Fake AWS credentials in the environment for the session; restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        yield


@pytest.fixture(scope="session")
def moto_server(fake_aws_env: None) -> Iterator[str]:
    """The base URL of a moto server on 127.0.0.1, started once per session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_credentials(moto_server: str) -> AwsCredentials:
    """Credentials block pointing at the moto server."""
    from prefect_aws import AwsCredentials

    return AwsCredentials(
        aws_access_key_id=AWS_ACCESS_KEY_ID,
        aws_secret_access_key=AWS_SECRET_ACCESS_KEY,
        region_name=AWS_REGION,
        aws_client_parameters={"endpoint_url": moto_server},
    )


@pytest.fixture
def s3_client(moto_server: str) -> Any:
    """A plain boto3 S3 client on the moto server, for assertions."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name=AWS_REGION,
        aws_access_key_id=AWS_ACCESS_KEY_ID,
        aws_secret_access_key=AWS_SECRET_ACCESS_KEY,
    )


@pytest.fixture
def s3_bucket(aws_credentials: AwsCredentials, s3_client: Any) -> S3Bucket:
    """An ``S3Bucket`` block on a new, empty bucket of the moto server."""
    from prefect_aws import S3Bucket

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return S3Bucket(bucket_name=name, credentials=aws_credentials)

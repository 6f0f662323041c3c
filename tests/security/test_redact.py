"""What an SDK says, wrapped in snapctl's errors, never carries a credential out: the real SDKs'
own words (botocore repeating a URL with its user and password, google-api-core repeating a
gateway's answer that echoed the Authorization header), and the shapes such words take."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.errors import AgentError, ProviderError, SnapctlError
from snapctl.redact import redact
from tests.conftest import LOOPBACK, free_port
from tests.moto_server import DEFAULT_REGION, dummy_aws_credentials

SECRET = "wJalrXUtnFEMIsecret9f8e7"


@pytest.mark.parametrize("service", ["ec2", "s3"])
def test_an_endpoint_url_with_a_password_is_not_repeated_by_botocores_error(monkeypatch, tmp_path: Path, service):
    # botocore reads AWS_ENDPOINT_URL_<SERVICE> itself (no inventory check sees it) and, when the
    # endpoint does not answer, says "Could not connect to the endpoint URL: "http://user:pw@..."".
    endpoint = f"http://AKIAUSER:{SECRET}@{LOOPBACK}:{free_port()}"
    monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service.upper()}", endpoint)
    with dummy_aws_credentials(), pytest.raises(SnapctlError) as caught:
        if service == "ec2":
            from snapctl.providers import create_provider

            provider = create_provider({"type": "aws", "region": DEFAULT_REGION, "max_attempts": 1,
                                        "connect_timeout_s": 2}, cluster="c1", base_dir=tmp_path)
            provider.find({"snapctl-run": "r1"})
        else:
            from snapctl.catalog.s3 import S3BlobStore

            S3BlobStore("s3://bucket/prefix", region=DEFAULT_REGION).read("index.json")

    said = str(caught.value)
    assert "Could not connect to the endpoint URL" in said, said  # botocore's words, the URL in them
    assert SECRET not in said and "AKIAUSER" not in said, said
    assert f"http://<redacted>@{LOOPBACK}:" in said


@pytest.mark.parametrize("text, expected", [
    ("GET https://a.blob.core.windows.net/c/d.vhd?sv=2022-11-02&sr=b&sp=r&sig=AbC%2Bd%3D failed",
     "GET https://a.blob.core.windows.net/c/d.vhd?sv=2022-11-02&sr=b&sp=r&sig=<redacted> failed"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9v+YmFy==;EndpointSuffix=core.windows.net",
     "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=<redacted>;EndpointSuffix=core.windows.net"),
    ("Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0",
     "Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=<redacted>"),
    ("https://s3.amazonaws.com/b/k?X-Amz-Credential=AKIA%2F&X-Amz-Security-Token=FwoG&X-Amz-Signature=abc1",
     "https://s3.amazonaws.com/b/k?X-Amz-Credential=<redacted>&X-Amz-Security-Token=<redacted>"
     "&X-Amz-Signature=<redacted>"),
    ("400 Bad Request: Authorization: Bearer ya29.a0Af-xyz; Host: x",
     "400 Bad Request: Authorization: <redacted>; Host: x"),
    ("headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x', 'X-Amz-Security-Token': b'FwoG'}",
     "headers={'Authorization': <redacted>, 'X-Amz-Security-Token': <redacted>}"),
    ("headers={'Authorization': 'Bearer ya29.cut-short-by-a-limit", "headers={'Authorization': <redacted>"),
    ("unable to parse: aws_secret_access_key = wJalrXUtnFEMI", "unable to parse: aws_secret_access_key = <redacted>"),
    ('File {"private_key_id": "0a1b", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQ...',
     'File {"private_key_id": <redacted>, "private_key": "<redacted>'),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n and after", "<redacted>\n and after"),
    ("http://user:pa55@proxy:3128 refused", "http://<redacted>@proxy:3128 refused"),
    ("AADSTS: client_id=1&client_secret=Qx8~abc&grant_type=client_credentials",  # an echoed azure-identity grant
     "AADSTS: client_id=1&client_secret=<redacted>&grant_type=client_credentials"),
    ("grant_type=refresh_token&refresh_token=1//0gAbC&client_secret=GOCSPX-x",  # a gcloud user's grant
     "grant_type=refresh_token&refresh_token=<redacted>&client_secret=<redacted>"),
    # AWS's own example secret key holds a /: the whole userinfo goes, up to its last @.
    ("cannot read s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY@bucket/prefix/index.json",
     "cannot read s3://<redacted>@bucket/prefix/index.json"),
    ("http://user:p@ss@proxy:3128 refused", "http://<redacted>@proxy:3128 refused"),
    ('{"password": "hunter2", "user": "ops"}', '{"password": <redacted>, "user": "ops"}'),
    ("{'access_token': 'ya29.a0Af', 'expires_in': 3599}", "{'access_token': <redacted>, 'expires_in': 3599}"),
    ('{"refresh_token": "1//0gAbC"}', '{"refresh_token": <redacted>}'),
    ("server.conf: pg.password=quest", "server.conf: pg.password=<redacted>"),
])
def test_credentials_in_the_shapes_sdks_repeat_them_are_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "node n1: the agent at http://127.0.0.1:7700 refused us: wrong bearer token",
    "send 'Authorization: Bearer <token>' with the agent's token (token_file or $SNAPCTL_AGENT_TOKEN)",
    "inventory.yaml: auth.token_file /etc/snapctl/cluster.token is readable by its group (mode 0640)",
    "gcp create snapshot snapctl-prod--r1--n1--data: 409 POST https://compute.googleapis.com/compute/v1/projects/"
    "p/zones/z/disks/d/createSnapshot?requestId=5f0c: already exists",
    "aws CreateSnapshots: InvalidVolume.NotFound: The volume 'vol-0123456789abcdef0' does not exist.",
    "set password_file in the engine block, not a password",
    "cannot read etcd password file /srv/etcd/nowhere.password: no such file or directory",
    "the token: a file readable only by its owner",
])
def test_words_without_a_credential_are_left_as_they_are(text):
    assert redact(text) == text


def test_every_snapctl_error_is_redacted_message_hint_and_reason():
    error = AgentError("n1", f"a gateway said: Authorization: Bearer {SECRET}", hint=f"see https://x/?token={SECRET}")
    assert SECRET not in str(error) and SECRET not in error.reason and SECRET not in error.hint
    assert SECRET not in ProviderError(f"http://u:{SECRET}@h/").message


def test_an_unexpected_errors_words_are_redacted_where_records_keep_them():
    # A manifest's error, a restore record's, a drill report's: they go to a shared catalog and CI
    # artifacts, and an error that is no SnapctlError (a library's own) was written as it came.
    from snapctl.drill_teardown import error_reason
    from snapctl.run_failure import reason

    unexpected = RuntimeError(f"connect to http://ops:{SECRET}@10.0.0.9:9000/ failed")
    for said in (reason(unexpected), error_reason(unexpected)):
        assert said.startswith("RuntimeError: connect to http://") and SECRET not in said


_INVENTORY = "cluster: c\nprovider: {provider}\n{catalog}nodes:\n  - {{name: n1, agent: '{agent}', {node}}}\n"
_AWS = "{type: aws, region: eu-west-1%s}"
_VOL = "volumes: [{name: data, volume: vol-0123456789abcdef0}]"


@pytest.mark.parametrize("provider, catalog, agent, node, said", [
    ("{type: local}", "", f"http://ops:{SECRET}@127.0.0.1:7700", "",
     "nodes[0].agent: an agent address takes no user or password"),
    ("{type: local}", "", f"http://{SECRET}@127.0.0.1:7700", "",  # a token where a user goes: accepted, before
     "nodes[0].agent: an agent address takes no user or password"),
    ("{type: local}", "", "http://127.0.0.1:7700", f"restore: {{agent: 'https://ops:{SECRET}@10.0.0.9:7700'}}",
     "nodes[0].restore.agent: an agent address takes no user or password"),
    (_AWS % f", endpoint_url: 'http://AKIAUSER:{SECRET}@127.0.0.1:9000'", "", "http://127.0.0.1:7700", _VOL,
     "provider aws: endpoint_url: not a URL: it must begin with http:// or https://, with no user:password@"),
    ("{type: local}", f"catalog: {{url: 's3://bucket/p', endpoint_url: 'http://AKIAUSER:{SECRET}@127.0.0.1:9'}}\n",
     "http://127.0.0.1:7700", "", "catalog.endpoint_url: not a URL: it must begin with http:// or https://"),
    ("{type: local}", f"catalog: {{url: 's3://AKIAUSER:{SECRET}@bucket/p'}}\n", "http://127.0.0.1:7700", "",
     "catalog.url: an s3 url takes no user or password"),
    # A secret key holding a / (AWS's own example key does): urlsplit reads the rest as the path.
    ("{type: local}", f"catalog: {{url: 's3://AKIAUSER:{SECRET}/K7MDENG@bucket/p'}}\n", "http://127.0.0.1:7700",
     "", "catalog.url: an s3 url takes no user or password"),
    ("{type: local}", "", f"http://ops:{SECRET}/K7@10.0.0.9:7700", "",
     "nodes[0].agent: an agent address takes no user or password"),
    # httpx sent it as basic auth (etcd ignores that) and logged it at debug; status showed the endpoint.
    ("{type: local}", "", "embedded",
     f"engine: {{type: etcd, endpoint: 'http://root:{SECRET}@127.0.0.1:2379', backup_dir: b}}",
     "engine etcd: endpoint: not an etcd client URL, http(s)://host:port, with no user:password@"),
], ids=["agent", "agent-token-as-user", "restore-agent", "aws-endpoint", "catalog-endpoint", "catalog-url",
        "catalog-url-key-with-slash", "agent-password-with-slash", "etcd-endpoint"])
def test_a_url_with_a_user_or_password_is_refused_without_repeating_it(tmp_path: Path, provider, catalog, agent,
                                                                        node, said):
    import json
    import subprocess
    import sys

    inventory = tmp_path / "inv.yaml"
    if provider == "{type: local}":
        node = ", ".join(part for part in (node, f"volumes: [{{name: data, path: {tmp_path}}}]") if part)
    catalog = catalog or f"catalog: {{path: '{tmp_path / 'catalog'}'}}\n"
    inventory.write_text(_INVENTORY.format(provider=provider, catalog=catalog, agent=agent, node=node))
    for output in ("text", "json"):
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "--dry-run", "-i", str(inventory),
                                 "-o", output],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert said in result.stderr + result.stdout
        assert SECRET not in result.stdout + result.stderr and "AKIAUSER" not in result.stdout + result.stderr
        if output == "json":
            json.loads(result.stdout)


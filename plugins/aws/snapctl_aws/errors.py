"""botocore errors in, snapctl errors out: each with what to do about it.

Messages carry the EC2 operation, the error code and AWS's own message; never a credential.
"""

from __future__ import annotations

from typing import Any

from snapctl.errors import (
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
    ProviderUnreachable,
    SnapctlError,
    SnapshotNotFound,
    certificate_refused,
)
from snapctl.ratelimit import parse_retry_after

PER_VOLUME_RATE = "SnapshotCreationPerVolumeRateExceeded"
THROTTLING = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", PER_VOLUME_RATE,
})
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnauthorizedAccess"})
BAD_CREDENTIALS = frozenset({
    "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
    "RequestExpired", "InvalidAccessKeyId", "UnrecognizedClientException",
})
# botocore's errors for a request that got no answer after its retries: refused, dropped or timed
# out on the way. Not SSLError: a certificate that does not verify will not verify later either.
UNREACHABLE = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ResponseStreamingError",
})
# EC2 failing on its side (any 5xx says so too), past botocore's retries: asked again later, the
# same call may well pass. Not a snapshot in state error: that is the snapshot's own answer.
SERVER_ERRORS = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})
SERVER_ERROR_HINT = ("EC2 is failing on its side: look for an outage in the region on the AWS Health Dashboard, "
                     "and try again later")
SNAPSHOT_NOT_FOUND = frozenset({"InvalidSnapshot.NotFound"})
VOLUME_NOT_FOUND = frozenset({"InvalidVolume.NotFound"})
VOLUME_IN_USE = "VolumeInUse"
INCORRECT_STATE = "IncorrectState"
NOT_FOUND_HINTS = {
    "InvalidVolume.NotFound": "check the node's volumes: block and the provider's region",
    "InvalidInstanceID.NotFound": "check the node's volumes: block and the provider's region",
    "InvalidVolumeID.Malformed": "EBS volume ids look like vol-0123456789abcdef0",
    "InvalidInstanceID.Malformed": "EC2 instance ids look like i-0123456789abcdef0",
    "InvalidZone.NotFound": "give an availability zone of the provider's region, e.g. us-east-1a",
    "InvalidSnapshot.InUse": "an AMI or another resource still uses the snapshot; deregister it first",
}
# The calls naming restore.instance, not an instance of the node's volumes: block (CreateSnapshots).
RESTORE_INSTANCE_CALLS = frozenset({"AttachVolume", "DescribeInstances"})
CREDENTIALS_HINT = (
    "boto3 found credentials that AWS rejected; check AWS_PROFILE / the provider's profile, "
    "refresh SSO (`aws sso login`) or the instance role (docs/providers/aws.md)"
)

# The profile signs in through IAM Identity Center: its token is missing, expired or refused.
SSO_ERRORS = frozenset({"SSOError", "SSOTokenLoadError", "UnauthorizedSSOTokenError", "TokenRetrievalError"})
SSO_HINT = ("the profile signs in through AWS IAM Identity Center (SSO): run `aws sso login --profile PROFILE` "
            "as the user snapctl runs as, or use an instance role on a host that backs up unattended")


class VolumeNotFound(ProviderError):
    """The EBS volume does not exist (for delete_volume this counts as done)."""


class VolumeInUse(ProviderError):
    """EC2 refused the call because the volume is attached: to a restore's AttachVolume, sent
    again by botocore after the first sending attached it, an answer to be checked, not believed."""


class IncorrectState(ProviderError):
    """EC2 refused the call in the resource's present state: to DetachVolume sent again by
    botocore after the first sending detached the volume, its answer is "in the 'available' state"."""


def _extra_permissions(operation: str) -> str:
    # Tagging on create needs ec2:CreateTags as well (AWS checks it on the same call).
    if operation in {"CreateSnapshot", "CreateSnapshots", "CreateVolume"}:
        return " and ec2:CreateTags"
    return ""


def translate_client_error(exc: Any) -> SnapctlError:
    """A ``botocore.exceptions.ClientError`` as the snapctl error that says what to do."""
    error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "").strip()
    operation = getattr(exc, "operation_name", None) or "EC2 call"
    detail = f"aws {operation}: {code}" + (f": {message}" if message else "")
    if code in DENIED:
        permission = f"ec2:{operation}"
        return ProviderError(
            f"aws {operation}: permission denied, the credentials lack {permission}",
            hint=f"grant {permission}{_extra_permissions(operation)} to this principal "
            "(policies in docs/providers/aws.md); decode details with `aws sts decode-authorization-message`",
        )
    if code in BAD_CREDENTIALS:
        return ProviderError(f"aws {operation}: credentials rejected ({code})", hint=CREDENTIALS_HINT)
    if code in THROTTLING:
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
        retry_after = parse_retry_after(headers.get("retry-after") or headers.get("x-amz-retry-after"))
        hint = (
            "AWS allows 5 snapshots in progress per volume (1 for st1/sc1): run backups further apart or let "
            "the earlier ones complete; per_volume_retries wait inside the hold, so more of them need "
            "policy.max_freeze_s above their waits"
            if code == PER_VOLUME_RATE
            else "EC2 throttled this account and region after all retries; lower the provider's "
            "*_rate settings or run fewer clusters at once"
        )
        return ProviderThrottled(detail, retry_after=retry_after, hint=hint)
    if code.startswith("Insufficient") and code.endswith("Capacity"):
        # EC2 answers these with a 5xx too, but no outage is to be waited out: the zone is full.
        return ProviderError(detail, hint="this availability zone has no capacity for it now: restore into "
                             "another zone (restore.zone, or --zone), or try again later")
    if code in SERVER_ERRORS or http_status(exc) >= 500:
        return ProviderUnavailable(detail, hint=SERVER_ERROR_HINT)
    if code in SNAPSHOT_NOT_FOUND:
        return SnapshotNotFound(detail)
    if code in VOLUME_NOT_FOUND:
        return VolumeNotFound(detail, hint=NOT_FOUND_HINTS.get(code))
    if code == VOLUME_IN_USE:
        return VolumeInUse(detail)
    if code == INCORRECT_STATE:
        return IncorrectState(detail)
    if code == "InvalidInstanceID.NotFound" and operation in RESTORE_INSTANCE_CALLS:
        return ProviderError(detail, hint="check the node's restore.instance and the provider's region")
    return ProviderError(detail, hint=NOT_FOUND_HINTS.get(code))


def translate_botocore_error(exc: Exception) -> SnapctlError:
    """Errors botocore raises before or without an AWS answer: credentials, region, network."""
    kind = type(exc).__name__
    if kind in {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return ProviderError(
            f"aws: no usable credentials ({kind})",
            hint="boto3 looks in AWS_* environment variables, the provider's profile in ~/.aws, SSO, "
            "then the instance or task role; see docs/providers/aws.md",
        )
    if kind in SSO_ERRORS:
        reason = (str(exc).strip().splitlines() or [""])[0]
        return ProviderError(f"aws: no usable credentials ({kind}): {reason}", hint=SSO_HINT)
    if kind == "ProfileNotFound":
        return ProviderError(f"aws: {exc}", hint="fix the provider's 'profile' or add it to ~/.aws/config")
    if reason := certificate_refused(exc):
        return ProviderError(f"aws: the EC2 endpoint's TLS certificate was refused: {reason}",
                             hint="trust the CA that signed it (AWS_CA_BUNDLE=/path/to/bundle.pem, or ca_bundle in "
                             "~/.aws/config; a proxy that inspects TLS has its own), or check the provider's "
                             "endpoint_url")
    if kind in UNREACHABLE:
        return ProviderUnreachable(f"aws: no answer from EC2 ({kind}): {exc}",
                                   hint="check network access to the EC2 endpoint")
    if kind == "ResponseParserError":  # an answer cut short on the way (b'' for a body): botocore says retry
        said = (str(exc).strip().splitlines() or [""])[0]
        return ProviderUnreachable(f"aws: no whole answer from EC2 ({kind}): {said}",
                                   hint="check network access to the EC2 endpoint (a proxy or a link that cuts "
                                        "answers short)")
    return ProviderError(f"aws: {kind}: {exc}")


def http_status(exc: Any) -> int:
    """The HTTP status of a botocore ClientError's answer; 0 for anything else (no answer)."""
    response = getattr(exc, "response", None)
    response = response if isinstance(response, dict) else {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else 0


def error_code(exc: Any) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None

"""snapctl's AWS provider: EBS snapshots through boto3 (imported only when first used)."""

from snapctl_aws.provider import AwsProvider
from snapctl_aws.settings import AwsSettings, InstanceVolumes, VolumeSpec

__all__ = ["AwsProvider", "AwsSettings", "InstanceVolumes", "VolumeSpec"]

"""AWS Bedrock: tokens from CloudWatch, spend from Cost Explorer, teams from application inference profiles.

``provider`` holds the provider; ``cloudwatch``, ``costs`` and ``models`` one source or mapping each; ``aws``
the boto3 plumbing (threads, request counting, error translation). boto3 is imported only when used.
"""

from .provider import BedrockProvider

__all__ = ["BedrockProvider"]

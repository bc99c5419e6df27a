"""kms-agent: a self-custodial signing agent whose vault opens only for a quorum of hardware tokens."""

__version__ = "0.1.0"

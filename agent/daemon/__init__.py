"""``kms-agent daemon``: Tatum KMS's daemon loop, fail closed, with our policy and approvals in between.

The modules, bottom up: :mod:`~agent.daemon.options` (flags and Tatum's environment variables as one
typed record), :mod:`~agent.daemon.tatum_api` (the Tatum API over httpx), :mod:`~agent.daemon.payloads`
(a pending transaction to our unsigned bytes) and :mod:`~agent.daemon.runner` (one polling pass, and
the loop). docs/daemon.md maps every Tatum flag, variable and payload to ours.
"""

"""Tatum KMS interop: its wallet.dat (CryptoJS passphrase mode), its entries, and moving them in and out.

* :mod:`agent.tatum.walletdat`: decrypt / encrypt the file (``openssl enc -aes-256-cbc -md md5``).
* :mod:`agent.tatum.entries`: what an entry is, whether it checks out, how it is sealed here.
* :mod:`agent.tatum.migrate`: import plans, one-transaction imports, exports, Tatum's ``report``.

Nothing here prompts or prints; ``agent.cli.tatum_cmd`` does (docs/migrating-from-tatum.md).
"""

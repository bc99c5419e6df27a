"""From signature to chain: sending signed transactions to a node and following them to a final state.

Nothing here signs or decrypts: it reads ``signature`` rows the withdrawal service committed and
records what nodes answered as ``broadcast`` and ``confirmation`` rows (docs/broadcast.md).
"""

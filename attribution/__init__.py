"""Proof-of-Attribution: receipts, EIP-712 types, Merkle batches, settlement client, payouts, attribution scoring.

Never imports torch: it must stay importable (and fast) on a machine with no ML stack.
"""

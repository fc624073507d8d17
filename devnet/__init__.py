"""The local development network: demo models and adapters, Anvil, deployment, seeding, N nodes on loopback."""

"""Datanets: the registry client, contributions, data/CID handling and the Model Factory (adapter training)."""

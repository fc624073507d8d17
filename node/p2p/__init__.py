"""The node network: py-libp2p in one trio thread behind one bridge; gossip, DHT providers, block exchange."""

"""Content addressing: Kubo-identical CIDs, the blockstore, DAG walking, CAR files, gateway and Kubo fetchers."""

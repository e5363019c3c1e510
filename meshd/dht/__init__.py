"""Private Kademlia DHT: the `kademlia` package wrapped with sealed datagrams and signed records."""

"""IO adapters: sockets, the DHT, mDNS, the store, drivers, host telemetry."""

package main

import (
	"crypto/tls"
	"net"
)

// tlsFor is --tls's configuration for a server at addr: verified against
// the system's roots, as rediss:// URLs are.
func tlsFor(addr string) *tls.Config {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
}

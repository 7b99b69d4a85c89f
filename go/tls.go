package etcdregistry

import "time"

// TLS configures TLS to etcd (rustls in the library: no OpenSSL needed). Setting any field, or
// giving an "https://" endpoint, turns TLS on for every endpoint; endpoints are then
// "host:port" or "https://host:port", never "http://".
//
// The CA, certificate and key come either from files or from PEM bytes, not a mix of both.
// Without a CA, etcd's certificate is checked against the system's roots. An empty TLS{} sets
// nothing: for TLS with the system roots and nothing else, give "https://" endpoints. A client certificate
// (mutual TLS, etcd's --client-cert-auth) needs its key; with authentication enabled and no
// password, etcd takes the certificate's CN as the user.
//
// The files are read and checked when the registry is created: a missing file, a file without
// a certificate or key, or a key that does not fit the certificate is an error matching
// ErrInvalidArgument that names the file. A failed handshake later (wrong CA, host name
// mismatch, expired certificate, client certificate refused or missing) is an error matching
// ErrTLS (and ErrConnection). The files are read again for each new connection: a certificate
// renewed on disk is used from the next connection on (files that cannot be used as they are
// leave the last good ones in use, with a warning).
type TLS struct {
	// CAFile, CertFile and KeyFile are paths of PEM files.
	CAFile, CertFile, KeyFile string
	// CAPEM, CertPEM and KeyPEM are PEM documents in memory (copied).
	CAPEM, CertPEM, KeyPEM []byte
	// ServerName is checked against etcd's certificate instead of the endpoint's host (for
	// endpoints given by IP address).
	ServerName string
}

func (t *TLS) usesFiles() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

func (t *TLS) usesPEM() bool { return t.CAPEM != nil || t.CertPEM != nil || t.KeyPEM != nil }

// Options are the optional settings of NewEtcdRegistryWithOptions; the zero value means no
// credentials, no TLS and the default timeout and backoff.
type Options struct {
	// Username and Password for an etcd with authentication; an empty Username means none.
	Username, Password string
	// Timeout of connecting and of each etcd call. 0 means 10 s.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the retry delays (see Config). 0 means 1 s and 30 s.
	BackoffMin, BackoffMax time.Duration
	// TLS to etcd; nil means plain HTTP/2 unless an endpoint is "https://".
	TLS *TLS
}

// NewEtcdRegistryWithOptions takes NewEtcdRegistry's endpoints and base path, and the optional
// settings (credentials, timeout, backoff, TLS) in opts. It checks them as New does, not with
// NewEtcdRegistry's leniency: an empty endpoint entry or a negative Timeout is an
// InvalidArgument error, and a Username with an empty Password is used. Like NewEtcdRegistry,
// it does not dial.
func NewEtcdRegistryWithOptions(endpoints []string, basePath string, opts Options) (*EtcdRegistry, error) {
	return New(Config{
		Endpoints:  endpoints,
		BasePath:   basePath,
		Username:   opts.Username,
		Password:   opts.Password,
		Timeout:    opts.Timeout,
		BackoffMin: opts.BackoffMin,
		BackoffMax: opts.BackoffMax,
		TLS:        opts.TLS,
	})
}

package etcdregistry

// TLS against real etcd servers started with certificates the harness generates at run time:
// mutual TLS from files and PEM bytes with a server name, the drop-in constructor unchanged,
// every handshake error (ErrTLS, also ErrConnection), unusable PEM (ErrInvalidArgument naming
// the file), a restart over mutual TLS, a client certificate renewed on disk, and no password or
// key in the logs or errors.

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const clientCN = "etcd-registry-client"

func tlsFiles(t *testing.T, h *harness) map[string]string {
	t.Helper()
	if h.tls == nil {
		t.Fatal("the harness was started without TLS")
	}
	return h.tls
}

func mtlsOptions(f map[string]string) Options {
	return Options{Timeout: 10 * time.Second, BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second,
		TLS: &TLS{CAFile: f["ca"], CertFile: f["client_cert"], KeyFile: f["client_key"]}}
}

func registerListWatch(t *testing.T, r *EtcdRegistry, node string) {
	t.Helper()
	service := serviceName(t)
	w, err := r.WatchService(t.Context(), service)
	if err != nil {
		t.Fatalf("watch over TLS: %v", err)
	}
	defer w.Close()
	g, err := r.Register(t.Context(), service, Node{Name: node, Info: map[string]string{"address": "10.0.0.5:80"}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, g.Done(), g.Errors())
	nodes, err := r.GetServiceNodes(service)
	if err != nil || !slices.Equal(nodeNames(nodes), []string{node}) {
		t.Fatalf("list over TLS: %v %v", nodes, err)
	}
	waitWatch(t, w, WatchAdded, node)
	if err := g.Unregister(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// firstListError connects with opts and returns the error of a first list.
func firstListError(t *testing.T, endpoints []string, opts Options) error {
	t.Helper()
	r, err := NewEtcdRegistryWithOptions(endpoints, "/tls", opts)
	if err != nil {
		t.Fatalf("the configuration is valid: %v", err)
	}
	defer r.Close()
	_, err = r.GetServiceNodes("api")
	if err == nil {
		t.Fatal("the list must fail")
	}
	return err
}

func TestMutualTLSFromFilesAndPEM(t *testing.T) {
	h := newHarness(t, "--client-cert-auth")
	f := tlsFiles(t, h)
	r, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", mtlsOptions(f))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	registerListWatch(t, r, "files")

	read := func(name string) []byte {
		b, err := os.ReadFile(f[name])
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	https := []string{"https://" + h.endpoints[0]}
	r2, err := NewEtcdRegistryWithOptions(https, "/tls", Options{TLS: &TLS{
		CAPEM: read("ca"), CertPEM: read("client_cert"), KeyPEM: read("client_key"), ServerName: "etcd.test"}})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	registerListWatch(t, r2, "pem")
}

func TestDropInConstructorWorksWithServerTLS(t *testing.T) {
	// NewEtcdRegistry is unchanged; https:// endpoints with the system roots reach it, and the
	// test CA is not among them: a TLS error, not a hang.
	h := newHarness(t, "--tls")
	r, err := NewEtcdRegistry([]string{"https://" + h.endpoints[0]}, "/tls", "", "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = r.GetServiceNodes("api")
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "unknown issuer") {
		t.Fatalf("got %v, want a TLS error about an unknown issuer", err)
	}
	r2, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", Options{TLS: &TLS{CAFile: tlsFiles(t, h)["ca"]}})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	registerListWatch(t, r2, "server-tls")
}

func TestTLSHandshakeErrors(t *testing.T) {
	h := newHarness(t, "--client-cert-auth")
	f := tlsFiles(t, h)
	with := func(change func(*TLS)) Options {
		opts := mtlsOptions(f)
		tls := *opts.TLS
		change(&tls)
		opts.TLS = &tls
		return opts
	}
	cases := []struct {
		name, want string
		opts       Options
	}{
		{"wrong CA", "certificate verify failed", with(func(c *TLS) { c.CAFile = f["other_ca"] })},
		{"hostname mismatch", "hostname mismatch", with(func(c *TLS) { c.ServerName = "wrong.test" })},
		{"no client certificate", "requires a client certificate", with(func(c *TLS) { c.CertFile, c.KeyFile = "", "" })},
		{"expired client certificate", "rejected the client certificate", with(func(c *TLS) {
			c.CertFile, c.KeyFile = f["expired_client_cert"], f["expired_client_key"]
		})},
	}
	for _, tc := range cases {
		err := firstListError(t, h.endpoints, tc.opts)
		var e *Error
		if !errors.Is(err, ErrTLS) || !errors.Is(err, ErrConnection) || !errors.As(err, &e) || e.Code != CodeTLS {
			t.Errorf("%s: got %v, want ErrTLS", tc.name, err)
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), h.endpoints[0]) {
			t.Errorf("%s: %q lacks %q or the endpoint", tc.name, err, tc.want)
		}
	}

	// A registration reports it on its error channel.
	r, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", cases[0].opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, errs, err := r.RegisterNode(t.Context(), "api", Node{Name: "n1"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, errs); !errors.Is(err, ErrTLS) {
		t.Fatalf("registration error %v, want ErrTLS", err)
	}
}

func TestUnusableTLSSettingsAreInvalidArguments(t *testing.T) {
	h := newHarness(t, "--client-cert-auth")
	f := tlsFiles(t, h)
	cases := []struct {
		want string
		tls  TLS
	}{
		{"/nonexistent/ca.pem", TLS{CAFile: "/nonexistent/ca.pem"}},
		{f["client_key"], TLS{CAFile: f["client_key"]}},
		{"in memory", TLS{CAPEM: []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n")}},
		{"does not fit", TLS{CAFile: f["ca"], CertFile: f["client_cert"], KeyFile: f["other_client_key"]}},
		{"key", TLS{CertFile: f["client_cert"]}},
		{"not both", TLS{CAFile: f["ca"], CertPEM: []byte("x"), KeyPEM: []byte("y")}},
		{"server name", TLS{CAFile: f["ca"], ServerName: "not a name!"}},
	}
	for _, tc := range cases {
		tls := tc.tls
		_, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", Options{TLS: &tls})
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an invalid argument naming %q", tc.tls, err, tc.want)
		}
	}
}

func TestRestartAndPartitionOverMutualTLS(t *testing.T) {
	h := newHarness(t, "--client-cert-auth", "--proxy")
	opts := mtlsOptions(tlsFiles(t, h))
	opts.Timeout = 2 * time.Second
	r, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g, err := r.Register(t.Context(), "svc", Node{Name: "n1"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, g.Events(), StatusRegistered)
	h.do(t, "kill 0")
	waitStatus(t, g.Events(), StatusKeepAliveLost)
	h.do(t, "start 0")
	waitStatus(t, g.Events(), StatusReregistered)
	eventually(t, "the node is listed again", func() bool {
		nodes, err := r.GetServiceNodes("svc")
		return err == nil && slices.Equal(nodeNames(nodes), []string{"n1"})
	})

	// Partitioned past the TTL: the lease expires in etcd, the node comes back on a new one.
	lease := g.LeaseID()
	h.do(t, "partition")
	waitStatus(t, g.Events(), StatusKeepAliveLost)
	eventually(t, "the lease expired in etcd", func() bool { return string(h.do(t, "lease-count")) == "0" })
	h.do(t, "heal")
	back := waitStatus(t, g.Events(), StatusReregistered)
	if back.LeaseID == 0 || back.LeaseID == lease {
		t.Fatalf("re-registered on lease %x after the old one %x expired", back.LeaseID, lease)
	}
	eventually(t, "the node is listed after the partition", func() bool {
		nodes, err := r.GetServiceNodes("svc")
		return err == nil && slices.Equal(nodeNames(nodes), []string{"n1"})
	})
}

// lockedBuffer collects log output written from the library's threads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestNoPasswordOrKeyInLogsOrErrors(t *testing.T) {
	h := newHarness(t, "--client-cert-auth")
	f := tlsFiles(t, h)
	const password = "go-tls-secret-pw"
	h.do(t, "enable-auth "+clientCN+" "+password)
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: LevelTrace}))
	if err := SetLogger(logger); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = SetLogger(nil) })

	opts := mtlsOptions(f)
	opts.Username, opts.Password = clientCN, password
	r, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", opts)
	if err != nil {
		t.Fatal(err)
	}
	registerListWatch(t, r, "secret")
	r.Close()
	var texts []string
	wrong := opts
	wrong.Password = password + password
	texts = append(texts, firstListError(t, h.endpoints, wrong).Error())
	key, err := os.ReadFile(f["client_key"])
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewEtcdRegistryWithOptions(h.endpoints, "/tls", Options{TLS: &TLS{CAPEM: key}})
	if err == nil {
		t.Fatal("a key as the CA must fail")
	}
	texts = append(texts, err.Error())
	logged := logs.String()
	if logged == "" {
		t.Fatal("the library logged nothing")
	}
	texts = append(texts, logged)
	for _, text := range texts {
		if strings.Contains(text, password) {
			t.Fatalf("password leaked: %s", text)
		}
		for _, line := range strings.Split(string(key), "\n") {
			if !strings.HasPrefix(line, "-----") && len(line) > 16 && strings.Contains(text, line) {
				t.Fatalf("key material leaked: %s", text)
			}
		}
	}
}

func TestExpiredServerCertificate(t *testing.T) {
	h := newHarness(t, "--tls-expired-server")
	err := firstListError(t, h.endpoints, Options{TLS: &TLS{CAFile: tlsFiles(t, h)["ca"]}})
	if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("got %v, want a TLS error about an expired certificate", err)
	}
}

// copyFile writes the bytes of src to a new file beside dst and renames it over dst, as
// certificate tools replace files.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

func TestClientCertificateRenewedOnDiskIsUsedWithoutANewRegistry(t *testing.T) {
	h := newHarness(t, "--client-cert-auth")
	f := tlsFiles(t, h)
	dir := t.TempDir()
	cert, key := dir+"/client.pem", dir+"/client-key.pem"
	copyFile(t, f["expired_client_cert"], cert)
	copyFile(t, f["expired_client_key"], key)
	opts := mtlsOptions(f)
	opts.TLS.CertFile, opts.TLS.KeyFile = cert, key
	r, err := NewEtcdRegistryWithOptions(h.endpoints, "/tls", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	service := serviceName(t)
	done, errs, err := r.RegisterNode(t.Context(), service, Node{Name: "n1"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := recvErr(t, errs); !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), "rejected the client certificate") {
		t.Fatalf("first attempt with the expired certificate: %v, want ErrTLS", err)
	}

	// The certificate is renewed on disk: the retries pick it up.
	copyFile(t, f["client_cert"], cert)
	copyFile(t, f["client_key"], key)
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatal("not registered with the renewed certificate")
	}
	nodes, err := r.GetServiceNodes(service)
	if err != nil || !slices.Equal(nodeNames(nodes), []string{"n1"}) {
		t.Fatalf("listed %v, %v; want n1", nodes, err)
	}
}

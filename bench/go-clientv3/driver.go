// Command driver is the native Go peer of the benchmark: etcd's own Go client
// (go.etcd.io/etcd/client/v3) used the way a careful Go service would use it, speaking the
// driver protocol of bench/README.md (driver ENDPOINTS BASE_PATH, commands on stdin, one JSON
// object per line on stdout). It is the layer `go-clientv3`, the yardstick of the Go package.
//
// One long-lived client for the whole process (a second one for the reading side of
// register_visible), one lease per TTL kept alive by clientv3's KeepAlive, nodes put on it,
// listings as one prefix get decoded from JSON. After a lost lease it grants a new one and puts
// every key back, retrying every 100 ms.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	warmup  = 3
	timeout = 30 * time.Second
	// Puts per transaction when putting keys back after a lost lease (etcd's default
	// --max-txn-ops is 128).
	txnOps = 128
)

var out = bufio.NewWriter(os.Stdout)

func emit(v any) {
	b, _ := json.Marshal(v)
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
}

func nodeValue(k int) string {
	b, _ := json.Marshal(map[string]string{
		"address": fmt.Sprintf("10.0.%d.%d:8080", k/256%256, k%256),
		"version": "1.0.0",
	})
	return string(b)
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

type node struct {
	Name string
	Info map[string]string
}

// list is one prefix get decoded into nodes, as a user of clientv3 writes it.
func list(ctx context.Context, c *clientv3.Client, prefix string) ([]node, error) {
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	nodes := make([]node, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), prefix)
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		var info map[string]string
		if json.Unmarshal(kv.Value, &info) != nil {
			continue
		}
		nodes = append(nodes, node{Name: name, Info: info})
	}
	return nodes, nil
}

// holder keeps the nodes of one TTL on one lease.
type holder struct {
	c      *clientv3.Client
	ttl    int64
	mu     sync.Mutex
	lease  clientv3.LeaseID
	keys   []string
	values []string
	ok     bool
	cancel context.CancelFunc
}

func (h *holder) grantAndKeep(ctx context.Context) error {
	g, err := h.c.Grant(ctx, h.ttl)
	if err != nil {
		return err
	}
	h.mu.Lock()
	keys, values := append([]string(nil), h.keys...), append([]string(nil), h.values...)
	h.mu.Unlock()
	for start := 0; start < len(keys); start += txnOps {
		end := min(start+txnOps, len(keys))
		ops := make([]clientv3.Op, 0, end-start)
		for i := start; i < end; i++ {
			ops = append(ops, clientv3.OpPut(keys[i], values[i], clientv3.WithLease(g.ID)))
		}
		if _, err := h.c.Txn(ctx).Then(ops...).Commit(); err != nil {
			return err
		}
	}
	h.mu.Lock()
	h.lease = g.ID
	h.ok = true
	h.mu.Unlock()
	return nil
}

// keep runs until ctx ends: drains KeepAlive's channel; when it closes (lease lost or
// expired), grants a new lease and puts every key back, retrying every 100 ms.
func (h *holder) keep(ctx context.Context) {
	for ctx.Err() == nil {
		h.mu.Lock()
		lease := h.lease
		h.mu.Unlock()
		ch, err := h.c.KeepAlive(ctx, lease)
		if err == nil {
			for range ch {
			}
		}
		h.mu.Lock()
		h.ok = false
		h.mu.Unlock()
		for ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := h.grantAndKeep(cctx)
			cancel()
			if err == nil {
				break
			}
			fmt.Fprintf(os.Stderr, "[go-clientv3] recovery: %v\n", err)
		}
	}
}

type driver struct {
	endpoints []string
	base      string
	a, b      *clientv3.Client
	hold      *holder
}

func (d *driver) connect() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            d.endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    7 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	})
}

func (d *driver) client() (*clientv3.Client, error) {
	if d.a == nil {
		c, err := d.connect()
		if err != nil {
			return nil, err
		}
		d.a = c
	}
	return d.a, nil
}

func (d *driver) reader() (*clientv3.Client, error) {
	if d.b == nil {
		c, err := d.connect()
		if err != nil {
			return nil, err
		}
		d.b = c
	}
	return d.b, nil
}

func (d *driver) prefix(service string) string {
	return strings.TrimRight(d.base, "/") + "/" + service + "/"
}

func (d *driver) list(service string, n int) (any, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*timeout)
	defer cancel()
	us := make([]float64, 0, n)
	nodes := 0
	for i := 0; i < warmup+n; i++ {
		t0 := time.Now()
		listing, err := list(ctx, c, d.prefix(service))
		took := time.Since(t0)
		if err != nil {
			return nil, err
		}
		nodes = len(listing)
		if i >= warmup {
			us = append(us, micros(took))
		}
	}
	return map[string]any{"us": us, "nodes": nodes}, nil
}

// registerVisible: with first, every registration is the first of its TTL (a lease granted
// for it); otherwise all share one lease granted before the first (untimed warm-up) one.
func (d *driver) registerVisible(service string, n int, ttl int64, first bool) (any, error) {
	a, err := d.client()
	if err != nil {
		return nil, err
	}
	b, err := d.reader()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // stops the keep-alives
	prefix := d.prefix(service)
	var leases []clientv3.LeaseID
	defer func() {
		for _, l := range leases {
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			a.Revoke(rctx, l)
			rcancel()
		}
	}()
	newLease := func(ttl int64) (clientv3.LeaseID, error) {
		g, err := a.Grant(ctx, ttl)
		if err != nil {
			return 0, err
		}
		leases = append(leases, g.ID)
		return g.ID, nil
	}
	var shared clientv3.LeaseID
	us := make([]float64, 0, n)
	for i := 0; i < warmup+n; i++ {
		name := fmt.Sprintf("n%d", i)
		t0 := time.Now()
		// The reader polls from the register call on, beside the write, as it must for every
		// layer (their Register returns before the key lands): a reader elsewhere does not
		// know when a writer's Put has returned.
		written := make(chan error, 1)
		go func() {
			lease := shared
			if first || i == 0 {
				t := ttl
				if first {
					t = ttl + 1 + int64(i)
				}
				var err error
				if lease, err = newLease(t); err != nil {
					written <- err
					return
				}
				shared = lease
			}
			if _, err := a.Put(ctx, prefix+name, nodeValue(i), clientv3.WithLease(lease)); err != nil {
				written <- err
				return
			}
			if first || i == 0 {
				if _, err := a.KeepAlive(ctx, lease); err != nil {
					written <- err
					return
				}
			}
			written <- nil
		}()
		var seen time.Duration
		for found := false; !found; {
			nodes, err := list(ctx, b, prefix)
			if err != nil {
				<-written
				return nil, err
			}
			for _, nd := range nodes {
				if nd.Name == name {
					found = true
					break
				}
			}
			seen = time.Since(t0)
			if !found && seen > timeout {
				<-written
				return nil, fmt.Errorf("%s not visible within %v", name, timeout)
			}
		}
		if err := <-written; err != nil {
			return nil, err
		}
		if i >= warmup {
			us = append(us, micros(seen))
		}
	}
	return map[string]any{"us": us}, nil
}

func (d *driver) watch(service string, n int) (any, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer cancel()
	prefix := d.prefix(service)
	wch := c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case r := <-wch:
		if err := r.Err(); err != nil {
			return nil, err
		}
	case <-time.After(timeout):
		return nil, errors.New("watch not created")
	}
	emit(map[string]any{"ready": true})
	us := make([]float64, 0, n)
	warm := false
	for len(us) < n {
		select {
		case r, ok := <-wch:
			now := time.Now().UnixNano()
			if !ok {
				return nil, fmt.Errorf("watch ended after %d of %d events", len(us), n)
			}
			if err := r.Err(); err != nil {
				return nil, err
			}
			for _, ev := range r.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var info map[string]string
				if json.Unmarshal(ev.Kv.Value, &info) != nil {
					continue
				}
				if _, isWarm := info["warm"]; isWarm && !warm {
					warm = true
					emit(map[string]any{"warm": true})
				} else if t, has := info["t"]; has {
					if put, err := strconv.ParseInt(t, 10, 64); err == nil {
						us = append(us, float64(now-put)/1e3)
					}
				}
			}
		case <-time.After(timeout):
			return nil, fmt.Errorf("%d of %d events within %v", len(us), n, timeout)
		}
	}
	return map[string]any{"us": us}, nil
}

func (d *driver) holdNodes(service string, n int, ttl int64) (any, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if d.hold == nil {
		h := &holder{c: c, ttl: ttl}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := h.grantAndKeep(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
		kctx, kcancel := context.WithCancel(context.Background())
		h.cancel = kcancel
		go h.keep(kctx)
		d.hold = h
	} else if d.hold.ttl != ttl {
		return nil, errors.New("one TTL per hold session")
	}
	h := d.hold
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	prefix := d.prefix(service)
	for i := 0; i < n; i++ {
		h.mu.Lock()
		k, lease := len(h.keys), h.lease
		h.mu.Unlock()
		key, value := prefix+"n"+strconv.Itoa(k), nodeValue(k)
		if _, err := c.Put(ctx, key, value, clientv3.WithLease(lease)); err != nil {
			return nil, err
		}
		h.mu.Lock()
		h.keys = append(h.keys, key)
		h.values = append(h.values, value)
		h.mu.Unlock()
	}
	ms := float64(time.Since(t0).Nanoseconds()) / 1e6
	h.mu.Lock()
	total := len(h.keys)
	h.mu.Unlock()
	return map[string]any{"ms": ms, "registered": total}, nil
}

func (d *driver) state() any {
	registered, total := 0, 0
	if h := d.hold; h != nil {
		h.mu.Lock()
		total = len(h.keys)
		if h.ok {
			registered = total
		}
		h.mu.Unlock()
	}
	return map[string]any{"registered": registered, "total": total}
}

func (d *driver) release() any {
	if h := d.hold; h != nil {
		h.cancel()
		h.mu.Lock()
		lease := h.lease
		h.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h.c.Revoke(ctx, lease)
		cancel()
		d.hold = nil
	}
	return map[string]any{"released": true}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "go.etcd.io/etcd/client/v3" {
				return m.Version
			}
		}
	}
	return "unknown"
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println("go.etcd.io/etcd/client/v3 " + version())
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: driver ENDPOINTS BASE_PATH")
		os.Exit(2)
	}
	var endpoints []string
	for _, e := range strings.Split(os.Args[1], ",") {
		if e != "" {
			endpoints = append(endpoints, e)
		}
	}
	d := &driver{endpoints: endpoints, base: os.Args[2]}
	emit(map[string]any{"ready": true})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		words := strings.Fields(in.Text())
		if len(words) == 0 {
			continue
		}
		if words[0] == "quit" {
			break
		}
		num := func(i int) int {
			if i >= len(words) {
				return -1
			}
			v, err := strconv.Atoi(words[i])
			if err != nil {
				return -1
			}
			return v
		}
		word := func(i int) string {
			if i >= len(words) {
				return ""
			}
			return words[i]
		}
		var reply any
		var err error
		switch words[0] {
		case "list":
			reply, err = d.list(word(1), num(2))
		case "register_visible":
			reply, err = d.registerVisible(word(1), num(2), int64(num(3)), word(4) == "first")
		case "watch":
			reply, err = d.watch(word(1), num(2))
		case "hold":
			reply, err = d.holdNodes(word(1), num(2), int64(num(3)))
		case "state":
			reply = d.state()
		case "release":
			reply = d.release()
		default:
			err = fmt.Errorf("unknown command %q", words[0])
		}
		if err != nil {
			emit(map[string]any{"error": fmt.Sprintf("%s: %v", words[0], err)})
		} else {
			emit(reply)
		}
	}
	d.release()
	for _, c := range []*clientv3.Client{d.a, d.b} {
		if c != nil {
			c.Close()
		}
	}
}

// Command driver is the benchmark driver of the Go package (go/, cgo over the C library),
// speaking the driver protocol of bench/README.md: driver ENDPOINTS BASE_PATH, commands on
// stdin, one JSON object per line on stdout.
//
// It uses the package the way a Go service would: NewEtcdRegistry, GetServiceNodes, Register
// (waiting on Done), WatchService (reading Events), Close. bench/run.sh builds it against the
// release library (eval "$(scripts/go-env.sh release)" points pkg-config at it).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

const (
	warmup  = 3
	timeout = 30 * time.Second
)

var out = bufio.NewWriter(os.Stdout)

func emit(v any) {
	b, _ := json.Marshal(v)
	out.Write(b)
	out.WriteByte('\n')
	out.Flush()
}

func nodeInfo(k int) map[string]string {
	return map[string]string{
		"address": fmt.Sprintf("10.0.%d.%d:8080", k/256%256, k%256),
		"version": "1.0.0",
	}
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

type driver struct {
	endpoints []string
	base      string
	hold      *etcdregistry.EtcdRegistry
	regs      []*etcdregistry.Registration
}

func (d *driver) registry() (*etcdregistry.EtcdRegistry, error) {
	return etcdregistry.NewEtcdRegistry(d.endpoints, d.base, "", "", 10*time.Second)
}

func (d *driver) list(service string, n int) (any, error) {
	r, err := d.registry()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	us := make([]float64, 0, n)
	nodes := 0
	for i := 0; i < warmup+n; i++ {
		t0 := time.Now()
		listing, err := r.GetServiceNodes(service)
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

// registerVisible: with first, every registration is the first of its TTL (TTL + 1 + i s).
func (d *driver) registerVisible(service string, n int, ttl int, first bool) (any, error) {
	a, err := d.registry()
	if err != nil {
		return nil, err
	}
	defer a.Close()
	b, err := d.registry()
	if err != nil {
		return nil, err
	}
	defer b.Close()
	ctx := context.Background()
	us := make([]float64, 0, n)
	for i := 0; i < warmup+n; i++ {
		name := fmt.Sprintf("n%d", i)
		t := ttl
		if first {
			t = ttl + 1 + i
		}
		t0 := time.Now()
		g, err := a.Register(ctx, service, etcdregistry.Node{Name: name, Info: nodeInfo(i)}, time.Duration(t)*time.Second)
		if err != nil {
			return nil, err
		}
		for found := false; !found; {
			nodes, err := b.GetServiceNodes(service)
			if err != nil {
				return nil, err
			}
			for _, node := range nodes {
				if node.Name == name {
					found = true
					break
				}
			}
			if !found && time.Since(t0) > timeout {
				return nil, fmt.Errorf("%s not visible within %v", name, timeout)
			}
		}
		if i >= warmup {
			us = append(us, micros(time.Since(t0)))
		}
		// As the floor and the peers do: the registration is complete (its keep-alive running)
		// before the next one begins, outside the timed span.
		select {
		case <-g.Done():
		case err := <-g.Errors():
			return nil, fmt.Errorf("%s: %v", name, err)
		case <-time.After(timeout):
			return nil, fmt.Errorf("%s not registered within %v", name, timeout)
		}
	}
	return map[string]any{"us": us}, nil
}

func (d *driver) watch(service string, n int) (any, error) {
	r, err := d.registry()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	w, err := r.WatchService(context.Background(), service)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	emit(map[string]any{"ready": true})
	us := make([]float64, 0, n)
	warm := false
	for len(us) < n {
		select {
		case ev, ok := <-w.Events():
			now := time.Now().UnixNano()
			if !ok {
				return nil, fmt.Errorf("watch ended after %d of %d events", len(us), n)
			}
			if ev.Type != etcdregistry.WatchAdded && ev.Type != etcdregistry.WatchUpdated {
				continue
			}
			if _, isWarm := ev.Node.Info["warm"]; isWarm && !warm {
				warm = true
				emit(map[string]any{"warm": true})
			} else if t, has := ev.Node.Info["t"]; has {
				put, err := strconv.ParseInt(t, 10, 64)
				if err == nil {
					us = append(us, float64(now-put)/1e3)
				}
			}
		case <-time.After(timeout):
			return nil, fmt.Errorf("%d of %d events within %v", len(us), n, timeout)
		}
	}
	return map[string]any{"us": us}, nil
}

func (d *driver) holdNodes(service string, n int, ttl int) (any, error) {
	if d.hold == nil {
		r, err := d.registry()
		if err != nil {
			return nil, err
		}
		d.hold = r
	}
	ctx := context.Background()
	start := len(d.regs)
	t0 := time.Now()
	for k := start; k < start+n; k++ {
		g, err := d.hold.Register(ctx, service, etcdregistry.Node{Name: fmt.Sprintf("n%d", k), Info: nodeInfo(k)}, time.Duration(ttl)*time.Second)
		if err != nil {
			return nil, err
		}
		d.regs = append(d.regs, g)
	}
	deadline := time.After(120 * time.Second)
	for _, g := range d.regs[start:] {
		select {
		case <-g.Done():
		case <-deadline:
			return nil, fmt.Errorf("node %s not registered within 120 s", g.NodeName())
		}
	}
	ms := float64(time.Since(t0).Nanoseconds()) / 1e6
	return map[string]any{"ms": ms, "registered": len(d.regs)}, nil
}

func (d *driver) state() any {
	registered := 0
	for _, g := range d.regs {
		if g.State() == etcdregistry.StateRegistered {
			registered++
		}
	}
	return map[string]any{"registered": registered, "total": len(d.regs)}
}

func (d *driver) release() any {
	if d.hold != nil {
		d.hold.Close()
		d.hold = nil
	}
	d.regs = nil
	return map[string]any{"released": true}
}

func main() {
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
	// Off by default: the driver behaves like a program that leaves SIGPIPE alone.
	if os.Getenv("BENCH_IGNORE_SIGPIPE") == "1" {
		signal.Ignore(syscall.SIGPIPE)
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
			reply, err = d.registerVisible(word(1), num(2), num(3), word(4) == "first")
		case "watch":
			reply, err = d.watch(word(1), num(2))
		case "hold":
			reply, err = d.holdNodes(word(1), num(2), num(3))
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
}
